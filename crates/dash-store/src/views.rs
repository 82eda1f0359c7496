//! Views in the store: their definitions, their per-minute states, and how both stay exact.
//!
//! - **Live.** A batch's transaction, once it holds its pipelines' rows (the lock every batch
//!   commit and every change of views takes), reads the pipeline's `views_version`. A batch that
//!   knows another version reads the definitions again, so a batch counts into exactly the views
//!   that existed when it took the lock. Its new events (never duplicates) are merged into the
//!   stored states of their view, group and minute before it commits.
//! - **History.** Making or changing a view starts a backfill ([`Store::backfill_step`]): minute
//!   by minute, in order, under the same lock, it replaces the view's states of a span with a
//!   computation over the events stored in it. Live batches count into every minute meanwhile;
//!   a recomputed span holds every event committed before the step, and batches after it add
//!   theirs, so the cut-over neither misses nor counts twice.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use dash_domain::{ViewTouch, format_ms, now_ms};
use dash_views::{BatchCounter, Cell, CountedView, Groups, ViewReader, ViewSpec};
use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::Sqlite;
use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Row};

use crate::{BatchEvent, Store, StoreError};

/// Events one backfill step recomputes at most (whole minutes: a minute with more is done
/// alone). The step holds its pipeline's lock meanwhile, so batches of that pipeline wait.
pub const BACKFILL_STEP_EVENTS: i64 = 20_000;

/// Most bytes of stored states one read of a view takes in.
pub const MAX_VIEW_READ_BYTES: usize = 64 << 20;

/// A view as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ViewRecord {
    pub pipeline: String,
    pub name: String,
    #[serde(flatten)]
    pub spec: ViewSpec,
    /// Rises each time what the view holds changes (and its history is computed again).
    pub generation: i64,
    pub created_at: String,
    pub updated_at: String,
    pub backfill: BackfillProgress,
    /// A line people read: `sum of /amount by /currency`.
    pub describe: String,
}

/// How far the computation of a view's history has come.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BackfillProgress {
    pub done: bool,
    /// Events recomputed so far.
    pub events_done: i64,
    /// Events to recompute, once known (when the backfill starts).
    pub events_total: Option<i64>,
}

impl BackfillProgress {
    /// From 0 to 1.
    pub fn fraction(&self) -> f64 {
        match (self.done, self.events_total) {
            (true, _) => 1.0,
            (false, Some(total)) if total > 0 => (self.events_done as f64 / total as f64).min(0.99),
            _ => 0.0,
        }
    }
}

/// A view whose history is still to be computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingBackfill {
    pub pipeline: String,
    pub view: String,
    pub generation: i64,
    /// When the view was made (unix ms).
    pub made_ms: i64,
}

/// A pipeline's views as a batch uses them, with what they read from events (made once per
/// version, not per batch).
#[derive(Debug)]
pub(crate) struct PipelineViews {
    version: i64,
    views: Vec<(String, ViewSpec)>,
    reader: ViewReader,
}

impl PipelineViews {
    fn new(version: i64, views: Vec<(String, ViewSpec)>) -> Self {
        let reader = ViewReader::new(&views);
        Self { version, views, reader }
    }
}

/// The definitions each pipeline's batches count into, by `views_version`; shared by a store's
/// clones. A stale entry costs one read: every batch checks the version under its lock.
#[derive(Clone, Default)]
pub(crate) struct ViewCache(Arc<Mutex<HashMap<String, Arc<PipelineViews>>>>);

impl ViewCache {
    fn get(&self, pipeline: &str, version: i64) -> Option<Arc<PipelineViews>> {
        let cache = self.0.lock();
        cache.get(pipeline).filter(|v| v.version == version).cloned()
    }

    fn put(&self, pipeline: &str, views: PipelineViews) -> Arc<PipelineViews> {
        let views = Arc::new(views);
        let mut cache = self.0.lock();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(pipeline.to_owned(), views.clone());
        views
    }
}

/// One state to write: view, minute, group, encoded cell.
struct StateRows {
    views: Vec<String>,
    minutes: Vec<i64>,
    groups: Vec<String>,
    states: Vec<Vec<u8>>,
}

/// Changes of one pipeline's batch, per view, with the groups first seen.
struct PipelineChanges {
    per_view: Vec<CountedView>,
}

impl PipelineChanges {
    /// Counts `events` (time, payload, type of its own) into every view.
    fn compute<'e>(
        views: &PipelineViews,
        groups: HashMap<String, Groups>,
        events: impl Iterator<Item = (i64, &'e str, Option<&'e str>)>,
    ) -> Self {
        let mut counter = BatchCounter::with_reader(&views.views, views.reader.clone(), groups);
        for (time_ms, payload, event_type) in events {
            counter.add(time_ms, payload, event_type);
        }
        Self { per_view: counter.finish() }
    }

    /// Leaves out the views in `broken` (their stored states could not be read).
    fn without(mut self, broken: &std::collections::HashSet<String>) -> Self {
        self.per_view.retain(|counted| !broken.contains(&counted.view));
        self
    }

    fn touches(&self) -> Vec<ViewTouch> {
        self.per_view
            .iter()
            .filter_map(|counted| {
                counted.changes.span().map(|(from, to)| ViewTouch { view: counted.view.clone(), from, to })
            })
            .collect()
    }

    /// Merges the changes into `stored` (the states already there, by view, minute and group).
    fn merged(self, mut stored: HashMap<(String, i64, String), Cell>) -> (StateRows, Vec<(String, String)>) {
        let mut rows = StateRows { views: Vec::new(), minutes: Vec::new(), groups: Vec::new(), states: Vec::new() };
        let mut new_groups = Vec::new();
        for CountedView { view, changes, new_groups: added } in self.per_view {
            for ((minute, group), cell) in changes.into_cells() {
                let state = match stored.remove(&(view.clone(), minute, group.clone())) {
                    Some(mut old) => {
                        old.merge(&cell);
                        old.encode()
                    }
                    None => cell.encode(),
                };
                rows.views.push(view.clone());
                rows.minutes.push(minute);
                rows.groups.push(group);
                rows.states.push(state);
            }
            new_groups.extend(added.into_iter().map(|g| (view.clone(), g)));
        }
        (rows, new_groups)
    }
}

fn decode_state(bytes: &[u8]) -> Result<Cell, StoreError> {
    Cell::decode(bytes).map_err(|e| StoreError::UnreadableView(e.to_string()))
}

fn spec_from(text: &str) -> Result<ViewSpec, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::UnreadableView(e.to_string()))
}

const VIEW_COLUMNS: &str = "pipeline_id, view_id, spec, generation, created_at, updated_at, \
    backfill_events, backfill_total, backfilled_at";

/// A `views` row (of [`VIEW_COLUMNS`]) as the API shows it, from either backend.
fn view_from<R: Row>(row: &R) -> Result<ViewRecord, StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let spec = spec_from(&row.try_get::<String, _>("spec")?)?;
    Ok(ViewRecord {
        pipeline: row.try_get("pipeline_id")?,
        name: row.try_get("view_id")?,
        describe: spec.describe(),
        spec,
        generation: row.try_get("generation")?,
        created_at: format_ms(row.try_get("created_at")?),
        updated_at: format_ms(row.try_get("updated_at")?),
        backfill: BackfillProgress {
            done: row.try_get::<Option<i64>, _>("backfilled_at")?.is_some(),
            events_done: row.try_get("backfill_events")?,
            events_total: row.try_get("backfill_total")?,
        },
    })
}

/// What [`Store::put_view`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewWrite {
    Created,
    /// What it holds changed: its history is computed again.
    Recomputing,
    /// Only how it is shown or kept changed.
    Updated,
    Unchanged,
}

impl Store {
    /// Makes or replaces `name` on `pipeline`. `must_exist`: only replace (`PATCH`); `must_be_new`:
    /// only make (`POST`, else [`StoreError::Conflict`]).
    pub async fn put_view(
        &self,
        pipeline: &str,
        name: &str,
        spec: &ViewSpec,
        mode: PutMode,
    ) -> Result<(ViewRecord, ViewWrite), StoreError> {
        dash_views::check_view_name(name).map_err(|e| StoreError::InvalidView(e.to_string()))?;
        spec.check().map_err(|e| StoreError::InvalidView(e.to_string()))?;
        let pipeline = self.find_pipeline(pipeline).await?.ok_or_else(|| StoreError::NotFound(pipeline.to_owned()))?.id;
        let text = serde_json::to_string(spec).expect("a spec serializes");
        let now = now_ms();
        let write = match self {
            Store::Sqlite(s) => {
                let mut tx = s.writer.begin_with("BEGIN IMMEDIATE").await?;
                let existing: Option<(String, i64)> =
                    sqlx::query_as("SELECT spec, generation FROM views WHERE pipeline_id = $1 AND view_id = $2")
                        .bind(&pipeline)
                        .bind(name)
                        .fetch_optional(&mut *tx)
                        .await?;
                let count: i64 = sqlx::query_scalar("SELECT count(*) FROM views WHERE pipeline_id = $1")
                    .bind(&pipeline)
                    .fetch_one(&mut *tx)
                    .await?;
                let write = decide(existing.as_ref().map(|(t, _)| t.as_str()), spec, mode, count, name)?;
                apply_sqlite(&mut tx, &pipeline, name, &text, write, now).await?;
                tx.commit().await?;
                write
            }
            Store::Postgres(s) => {
                let mut tx = s.pool.begin().await?;
                // The pipeline's row first: the lock every batch commit takes.
                sqlx::query("SELECT 1 FROM pipelines WHERE id = $1 FOR UPDATE")
                    .bind(&pipeline)
                    .execute(&mut *tx)
                    .await?;
                let existing: Option<(String, i64)> =
                    sqlx::query_as("SELECT spec, generation FROM views WHERE pipeline_id = $1 AND view_id = $2")
                        .bind(&pipeline)
                        .bind(name)
                        .fetch_optional(&mut *tx)
                        .await?;
                let count: i64 = sqlx::query_scalar("SELECT count(*) FROM views WHERE pipeline_id = $1")
                    .bind(&pipeline)
                    .fetch_one(&mut *tx)
                    .await?;
                let write = decide(existing.as_ref().map(|(t, _)| t.as_str()), spec, mode, count, name)?;
                apply_pg(&mut tx, &pipeline, name, &text, write, now).await?;
                tx.commit().await?;
                write
            }
        };
        let record = self.find_view(&pipeline, name).await?.ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
        Ok((record, write))
    }

    /// Deletes a view and everything it holds. False when there was none.
    pub async fn delete_view(&self, pipeline: &str, name: &str) -> Result<bool, StoreError> {
        if dash_views::check_view_name(name).is_err() {
            return Ok(false);
        }
        let Some(pipeline) = self.find_pipeline(pipeline).await? else {
            return Err(StoreError::NotFound(pipeline.to_owned()));
        };
        let pipeline = pipeline.id;
        let deleted = match self {
            Store::Sqlite(s) => {
                let mut tx = s.writer.begin_with("BEGIN IMMEDIATE").await?;
                let deleted = delete_sqlite(&mut tx, &pipeline, name).await?;
                tx.commit().await?;
                deleted
            }
            Store::Postgres(s) => {
                let mut tx = s.pool.begin().await?;
                sqlx::query("SELECT 1 FROM pipelines WHERE id = $1 FOR UPDATE")
                    .bind(&pipeline)
                    .execute(&mut *tx)
                    .await?;
                let deleted = delete_pg(&mut tx, &pipeline, name).await?;
                tx.commit().await?;
                deleted
            }
        };
        Ok(deleted)
    }

    /// A pipeline's views, by name.
    pub async fn list_views(&self, pipeline: &str) -> Result<Vec<ViewRecord>, StoreError> {
        let sql = format!("SELECT {VIEW_COLUMNS} FROM views WHERE pipeline_id = $1 ORDER BY view_id");
        match self {
            Store::Sqlite(s) => {
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(pipeline).fetch_all(&s.readers).await?;
                rows.iter().map(view_from).collect()
            }
            Store::Postgres(s) => {
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(pipeline).fetch_all(&s.pool).await?;
                rows.iter().map(view_from).collect()
            }
        }
    }

    pub async fn find_view(&self, pipeline: &str, name: &str) -> Result<Option<ViewRecord>, StoreError> {
        if dash_views::check_view_name(name).is_err() {
            return Ok(None);
        }
        let sql = format!("SELECT {VIEW_COLUMNS} FROM views WHERE pipeline_id = $1 AND view_id = $2");
        match self {
            Store::Sqlite(s) => {
                // The writer: a view just written is read back at once.
                let row =
                    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(pipeline).bind(name).fetch_optional(&s.writer).await?;
                row.as_ref().map(view_from).transpose()
            }
            Store::Postgres(s) => {
                let row =
                    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(pipeline).bind(name).fetch_optional(&s.pool).await?;
                row.as_ref().map(view_from).transpose()
            }
        }
    }

    /// Views whose history is still to be computed.
    pub async fn pending_backfills(&self) -> Result<Vec<PendingBackfill>, StoreError> {
        const SQL: &str = "SELECT pipeline_id, view_id, generation, created_at FROM views \
            WHERE backfilled_at IS NULL ORDER BY updated_at";
        let rows: Vec<(String, String, i64, i64)> =
            on_backend!(self, readers, |pool| sqlx::query_as(SQL).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|(pipeline, view, generation, made_ms)| PendingBackfill { pipeline, view, generation, made_ms })
            .collect())
    }

    /// Recomputes the next span of a view's history (at most `max_events` events, see
    /// [`BACKFILL_STEP_EVENTS`];
    /// whole minutes) from the stored events, under the pipeline's lock. `None` when the view is
    /// gone or has moved to another generation (that generation's backfill takes over).
    pub async fn backfill_step(
        &self,
        pipeline: &str,
        view: &str,
        generation: i64,
        max_events: i64,
    ) -> Result<Option<BackfillProgress>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let mut tx = s.writer.begin_with("BEGIN IMMEDIATE").await?;
                let progress = backfill_sqlite(&mut tx, pipeline, view, generation, max_events).await?;
                tx.commit().await?;
                Ok(progress)
            }
            Store::Postgres(s) => {
                let mut tx = s.pool.begin().await?;
                let progress = backfill_pg(&mut tx, pipeline, view, generation, max_events).await?;
                tx.commit().await?;
                Ok(progress)
            }
        }
    }

    /// A view's stored minutes in `[from, to)`: (minute, group, state); one group's only if
    /// `group` is given. Read as a stream and refused ([`StoreError::ReadTooLarge`]) past
    /// `limit` states or [`MAX_VIEW_READ_BYTES`] of them.
    pub async fn view_minutes(
        &self,
        pipeline: &str,
        view: &str,
        from_ms: i64,
        to_ms: i64,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(i64, String, Cell)>, StoreError> {
        use futures_util::TryStreamExt;
        const SQLITE: &str = "SELECT minute, grp, state FROM view_minutes \
            WHERE pipeline_id = $1 AND view_id = $2 AND minute >= $3 AND minute < $4 AND ($5 IS NULL OR grp = $5) \
            ORDER BY minute";
        const POSTGRES: &str = "SELECT minute, grp, state FROM view_minutes \
            WHERE pipeline_id = $1 AND view_id = $2 AND minute >= $3 AND minute < $4 \
            AND ($5::text IS NULL OR grp = $5) ORDER BY minute";
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut keep = |(minute, grp, state): (i64, String, Vec<u8>)| -> Result<(), StoreError> {
            bytes += state.len() + grp.len();
            if out.len() >= limit || bytes > MAX_VIEW_READ_BYTES {
                return Err(StoreError::ReadTooLarge);
            }
            out.push((minute, grp, decode_state(&state)?));
            Ok(())
        };
        match self {
            Store::Sqlite(s) => {
                let mut rows = sqlx::query_as(SQLITE)
                    .bind(pipeline)
                    .bind(view)
                    .bind(from_ms)
                    .bind(to_ms)
                    .bind(group)
                    .fetch(&s.readers);
                while let Some(row) = rows.try_next().await? {
                    keep(row)?;
                }
            }
            Store::Postgres(s) => {
                let mut rows = sqlx::query_as(POSTGRES)
                    .bind(pipeline)
                    .bind(view)
                    .bind(from_ms)
                    .bind(to_ms)
                    .bind(group)
                    .fetch(&s.pool);
                while let Some(row) = rows.try_next().await? {
                    keep(row)?;
                }
            }
        }
        Ok(out)
    }
}

/// Every view, for [`view_cutoffs`].
pub(crate) const VIEWS_KEPT: &str = "SELECT pipeline_id, view_id, spec FROM views";
/// A view's minutes before a cutoff go: ($1 pipeline, $2 view, $3 cutoff).
pub(crate) const PRUNE_STATES: &str =
    "DELETE FROM view_minutes WHERE pipeline_id = $1 AND view_id = $2 AND minute < $3";

/// Each view (rows of [`VIEWS_KEPT`]) with the time before which its minutes go: its `keep`, or
/// without one its pipeline's retention cutoff (`cutoffs`, as maintenance worked it out).
pub(crate) fn view_cutoffs(
    views: Vec<(String, String, String)>,
    cutoffs: &[(String, i64)],
    now: i64,
) -> Vec<(String, String, i64)> {
    let cutoff_of: HashMap<&str, i64> = cutoffs.iter().map(|(p, c)| (p.as_str(), *c)).collect();
    views
        .into_iter()
        .filter_map(|(pipeline, view, spec)| {
            let spec = spec_from(&spec).ok()?;
            let cutoff = match spec.keep {
                Some(keep) => now.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX)),
                None => *cutoff_of.get(pipeline.as_str())?,
            };
            Some((pipeline, view, cutoff))
        })
        .collect()
}

/// How [`Store::put_view`] may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Make it; a view of that name is a conflict.
    Create,
    /// Change it; none of that name is "not found".
    Replace,
    /// Make or change (the config file).
    Upsert,
}

fn decide(
    existing: Option<&str>,
    spec: &ViewSpec,
    mode: PutMode,
    count: i64,
    name: &str,
) -> Result<ViewWrite, StoreError> {
    match (existing, mode) {
        (Some(_), PutMode::Create) => Err(StoreError::Conflict(name.to_owned())),
        (None, PutMode::Replace) => Err(StoreError::NotFound(name.to_owned())),
        (None, _) if count >= dash_views::MAX_VIEWS_PER_PIPELINE as i64 => Err(StoreError::InvalidView(format!(
            "name: a pipeline has at most {} views",
            dash_views::MAX_VIEWS_PER_PIPELINE
        ))),
        (None, _) => Ok(ViewWrite::Created),
        (Some(text), _) => match spec_from(text) {
            Ok(old) if old == *spec => Ok(ViewWrite::Unchanged),
            Ok(old) if old.same_results(spec) => Ok(ViewWrite::Updated),
            _ => Ok(ViewWrite::Recomputing),
        },
    }
}

/// Deletes a view's states and groups (with its pipeline's row locked).
macro_rules! forget_states {
    ($tx:expr, $pipeline:expr, $name:expr) => {
        for table in ["view_minutes", "view_groups"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE pipeline_id = $1 AND view_id = $2")))
                .bind($pipeline)
                .bind($name)
                .execute(&mut *$tx)
                .await?;
        }
    };
}

/// Starts a view over (a new generation, its states gone, its backfill pending), with a new
/// definition or (`None`) the one it has: a change of what it holds, or states that cannot be
/// read. Run with its pipeline's row locked.
macro_rules! restart_view {
    ($tx:expr, $pipeline:expr, $name:expr, $spec:expr, $now:expr) => {{
        sqlx::query(
            "UPDATE views SET spec = COALESCE($3, spec), updated_at = $4, generation = generation + 1, \
             backfill_until = NULL, backfill_through = NULL, backfill_events = 0, backfill_total = NULL, \
             backfilled_at = NULL WHERE pipeline_id = $1 AND view_id = $2",
        )
        .bind($pipeline)
        .bind($name)
        .bind($spec)
        .bind($now)
        .execute(&mut *$tx)
        .await?;
        forget_states!($tx, $pipeline, $name);
    }};
}

/// Writes a view change decided by [`decide`]: a new or recomputed view starts its backfill with
/// nothing stored; the pipeline's `views_version` rises so batches read the definitions again.
macro_rules! apply_view_write {
    ($tx:expr, $pipeline:expr, $name:expr, $text:expr, $write:expr, $now:expr) => {{
        match $write {
            ViewWrite::Unchanged => return Ok(()),
            ViewWrite::Created => {
                sqlx::query(
                    "INSERT INTO views (pipeline_id, view_id, spec, generation, created_at, updated_at) \
                     VALUES ($1, $2, $3, 1, $4, $4)",
                )
                .bind($pipeline)
                .bind($name)
                .bind($text)
                .bind($now)
                .execute(&mut *$tx)
                .await?;
            }
            ViewWrite::Updated => {
                sqlx::query("UPDATE views SET spec = $3, updated_at = $4 WHERE pipeline_id = $1 AND view_id = $2")
                    .bind($pipeline)
                    .bind($name)
                    .bind($text)
                    .bind($now)
                    .execute(&mut *$tx)
                    .await?;
            }
            ViewWrite::Recomputing => restart_view!($tx, $pipeline, $name, Some($text), $now),
        }
        sqlx::query("UPDATE pipelines SET views_version = views_version + 1 WHERE id = $1")
            .bind($pipeline)
            .execute(&mut *$tx)
            .await?;
        Ok(())
    }};
}

async fn apply_sqlite(
    tx: &mut SqliteConnection,
    pipeline: &str,
    name: &str,
    text: &str,
    write: ViewWrite,
    now: i64,
) -> Result<(), StoreError> {
    apply_view_write!(tx, pipeline, name, text, write, now)
}

async fn apply_pg(
    tx: &mut PgConnection,
    pipeline: &str,
    name: &str,
    text: &str,
    write: ViewWrite,
    now: i64,
) -> Result<(), StoreError> {
    apply_view_write!(tx, pipeline, name, text, write, now)
}

/// Deletes a view, its states and groups, and raises its pipeline's `views_version`; true when
/// there was one.
macro_rules! delete_view_rows {
    ($tx:expr, $pipeline:expr, $name:expr) => {{
        let deleted = sqlx::query("DELETE FROM views WHERE pipeline_id = $1 AND view_id = $2")
            .bind($pipeline)
            .bind($name)
            .execute(&mut *$tx)
            .await?
            .rows_affected()
            > 0;
        if deleted {
            forget_states!($tx, $pipeline, $name);
            sqlx::query("UPDATE pipelines SET views_version = views_version + 1 WHERE id = $1")
                .bind($pipeline)
                .execute(&mut *$tx)
                .await?;
        }
        Ok(deleted)
    }};
}

async fn delete_sqlite(tx: &mut SqliteConnection, pipeline: &str, name: &str) -> Result<bool, StoreError> {
    delete_view_rows!(tx, pipeline, name)
}

async fn delete_pg(tx: &mut PgConnection, pipeline: &str, name: &str) -> Result<bool, StoreError> {
    delete_view_rows!(tx, pipeline, name)
}

// ---- live: inside a batch's transaction, after its pipelines' rows are locked ----

/// The definitions that read; one that does not (written by a newer release, say) is left out
/// of counting, with an error logged, rather than stopping the pipeline's batches.
fn readable_views(pipeline: &str, rows: Vec<(String, String)>) -> Vec<(String, ViewSpec)> {
    rows.into_iter()
        .filter_map(|(view, spec)| match spec_from(&spec) {
            Ok(spec) => Some((view, spec)),
            Err(err) => {
                tracing::error!(pipeline, view, error = %err, "a view's definition is unreadable; it is not counted");
                None
            }
        })
        .collect()
}

/// SQLite: counts a pipeline's new events of a batch into its views. `fresh`: (time, payload,
/// type of its own).
pub(crate) async fn count_batch_sqlite<'e>(
    tx: &mut SqliteConnection,
    cache: &ViewCache,
    pipeline: &str,
    version: i64,
    fresh: impl Iterator<Item = (i64, &'e str, Option<&'e str>)>,
) -> Result<Vec<ViewTouch>, StoreError> {
    let views = match cache.get(pipeline, version) {
        Some(views) => views,
        None => {
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT view_id, spec FROM views WHERE pipeline_id = $1 ORDER BY view_id")
                    .bind(pipeline)
                    .fetch_all(&mut *tx)
                    .await?;
            let views = readable_views(pipeline, rows);
            cache.put(pipeline, PipelineViews::new(version, views))
        }
    };
    if views.views.is_empty() {
        return Ok(Vec::new());
    }
    let groups = groups_sqlite(tx, pipeline).await?;
    let changes = PipelineChanges::compute(&views, groups, fresh);
    let touches = changes.touches();
    // The states already stored under the changed keys, a few statements for the whole batch.
    let keys: Vec<(&str, i64, &str)> = changes
        .per_view
        .iter()
        .flat_map(|CountedView { view, changes: c, .. }| c.keys().into_iter().map(move |(m, g)| (view.as_str(), m, g)))
        .collect();
    let mut stored = HashMap::new();
    let mut broken = std::collections::HashSet::new();
    for chunk in keys.chunks(SQLITE_ROWS_PER_STATEMENT) {
        let mut select: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT view_id, minute, grp, state FROM view_minutes WHERE pipeline_id = ");
        select.push_bind(pipeline).push(" AND (view_id, minute, grp) IN (VALUES ");
        let mut row = select.separated(", ");
        for (view, minute, group) in chunk {
            row.push("(").push_bind_unseparated(*view).push_unseparated(", ");
            row.push_bind_unseparated(*minute)
                .push_unseparated(", ")
                .push_bind_unseparated(*group)
                .push_unseparated(")");
        }
        select.push(")");
        let rows: Vec<(String, i64, String, Vec<u8>)> = select.build_query_as().fetch_all(&mut *tx).await?;
        for (view, minute, group, state) in rows {
            match decode_state(&state) {
                Ok(cell) => {
                    stored.insert((view, minute, group), cell);
                }
                Err(err) => {
                    tracing::error!(pipeline, view, error = %err, "a view's stored state is unreadable; the view is computed again");
                    broken.insert(view);
                }
            }
        }
    }
    let changes = changes.without(&broken);
    for view in &broken {
        restart_view!(tx, pipeline, view, None::<&str>, now_ms());
    }
    let (rows, new_groups) = changes.merged(stored);
    write_states_sqlite(tx, pipeline, rows, new_groups).await?;
    Ok(touches)
}

async fn groups_sqlite(tx: &mut SqliteConnection, pipeline: &str) -> Result<HashMap<String, Groups>, StoreError> {
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT view_id, grp FROM view_groups WHERE pipeline_id = $1")
        .bind(pipeline)
        .fetch_all(&mut *tx)
        .await?;
    Ok(group_sets(rows))
}

fn group_sets(rows: Vec<(String, String)>) -> HashMap<String, Groups> {
    let mut by_view: HashMap<String, Vec<String>> = HashMap::new();
    for (view, group) in rows {
        by_view.entry(view).or_default().push(group);
    }
    by_view.into_iter().map(|(view, groups)| (view, Groups::new(groups))).collect()
}

async fn write_states_sqlite(
    tx: &mut SqliteConnection,
    pipeline: &str,
    rows: StateRows,
    new_groups: Vec<(String, String)>,
) -> Result<(), StoreError> {
    for start in (0..rows.views.len()).step_by(SQLITE_ROWS_PER_STATEMENT) {
        let chunk = start..(start + SQLITE_ROWS_PER_STATEMENT).min(rows.views.len());
        let mut insert: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO view_minutes (pipeline_id, view_id, minute, grp, state) ");
        insert.push_values(chunk, |mut row, i| {
            row.push_bind(pipeline)
                .push_bind(&rows.views[i])
                .push_bind(rows.minutes[i])
                .push_bind(&rows.groups[i])
                .push_bind(&rows.states[i]);
        });
        insert.push(" ON CONFLICT (pipeline_id, view_id, minute, grp) DO UPDATE SET state = excluded.state");
        insert.build().execute(&mut *tx).await?;
    }
    for chunk in new_groups.chunks(SQLITE_ROWS_PER_STATEMENT) {
        let mut insert: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO view_groups (pipeline_id, view_id, grp) ");
        insert.push_values(chunk, |mut row, (view, group)| {
            row.push_bind(pipeline).push_bind(view).push_bind(group);
        });
        insert.push(" ON CONFLICT DO NOTHING");
        insert.build().execute(&mut *tx).await?;
    }
    Ok(())
}

/// Rows per statement when SQLite reads or writes view states (five parameters a row at most,
/// well within SQLite's bound on parameters).
const SQLITE_ROWS_PER_STATEMENT: usize = 500;

/// PostgreSQL: counts each pipeline's new events of a committing batch into its views.
/// `versions`: each locked pipeline's `views_version`; `events` and `fresh` as staged.
pub(crate) async fn count_batch_pg(
    tx: &mut PgConnection,
    cache: &ViewCache,
    versions: &HashMap<String, i64>,
    events: &[BatchEvent],
    fresh: &[u32],
) -> Result<HashMap<String, Vec<ViewTouch>>, StoreError> {
    let mut with_views: Vec<(&str, Arc<PipelineViews>)> = Vec::new();
    let mut to_load: Vec<(&str, i64)> = Vec::new();
    for (pipeline, version) in versions {
        match cache.get(pipeline, *version) {
            Some(views) if views.views.is_empty() => {}
            Some(views) => with_views.push((pipeline, views)),
            None => to_load.push((pipeline, *version)),
        }
    }
    if !to_load.is_empty() {
        let ids: Vec<&str> = to_load.iter().map(|(p, _)| *p).collect();
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT pipeline_id, view_id, spec FROM views WHERE pipeline_id = ANY($1) ORDER BY pipeline_id, view_id",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut loaded: HashMap<String, Vec<(String, ViewSpec)>> = HashMap::new();
        let mut specs: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (pipeline, view, spec) in rows {
            specs.entry(pipeline).or_default().push((view, spec));
        }
        for (pipeline, rows) in specs {
            let views = readable_views(&pipeline, rows);
            loaded.insert(pipeline, views);
        }
        for (pipeline, version) in to_load {
            let views = cache.put(pipeline, PipelineViews::new(version, loaded.remove(pipeline).unwrap_or_default()));
            if !views.views.is_empty() {
                with_views.push((pipeline, views));
            }
        }
    }
    let mut touches = HashMap::new();
    if with_views.is_empty() {
        return Ok(touches);
    }
    let ids: Vec<&str> = with_views.iter().map(|(p, _)| *p).collect();
    let group_rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT pipeline_id, view_id, grp FROM view_groups WHERE pipeline_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
    let mut groups_of: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for (pipeline, view, group) in group_rows {
        groups_of.entry(pipeline).or_default().push((view, group));
    }
    let mut all_changes = Vec::new();
    for (pipeline, views) in &with_views {
        let groups = group_sets(groups_of.remove(*pipeline).unwrap_or_default());
        let events_of = fresh
            .iter()
            .map(|i| &events[*i as usize])
            .filter(|e| &*e.pipeline == *pipeline)
            .map(|e| (e.event.time_ms, e.event.payload.as_str(), e.event.event_type.as_deref()));
        let changes = PipelineChanges::compute(views, groups, events_of);
        touches.insert((*pipeline).to_owned(), changes.touches());
        all_changes.push((*pipeline, changes));
    }
    // The states already stored under the changed keys, in one round trip.
    let (mut kp, mut kv, mut km, mut kg) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (pipeline, changes) in &all_changes {
        for CountedView { view, changes: c, .. } in &changes.per_view {
            for (minute, group) in c.keys() {
                kp.push(*pipeline);
                kv.push(view.as_str());
                km.push(minute);
                kg.push(group);
            }
        }
    }
    let stored_rows: Vec<(String, String, i64, String, Vec<u8>)> = sqlx::query_as(
        "SELECT m.pipeline_id, m.view_id, m.minute, m.grp, m.state FROM view_minutes m \
         JOIN UNNEST($1::text[], $2::text[], $3::int8[], $4::text[]) AS k(p, v, mi, g) \
         ON m.pipeline_id = k.p AND m.view_id = k.v AND m.minute = k.mi AND m.grp = k.g",
    )
    .bind(&kp)
    .bind(&kv)
    .bind(&km)
    .bind(&kg)
    .fetch_all(&mut *tx)
    .await?;
    let mut stored: HashMap<String, HashMap<(String, i64, String), Cell>> = HashMap::new();
    let mut broken: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    for (pipeline, view, minute, group, state) in stored_rows {
        match decode_state(&state) {
            Ok(cell) => {
                stored.entry(pipeline).or_default().insert((view, minute, group), cell);
            }
            Err(err) => {
                tracing::error!(pipeline, view, error = %err, "a view's stored state is unreadable; the view is computed again");
                broken.entry(pipeline).or_default().insert(view);
            }
        }
    }
    for (pipeline, views) in &broken {
        for view in views {
            restart_view!(tx, pipeline, view, None::<&str>, now_ms());
        }
    }
    let (mut wp, mut wv, mut wm, mut wg, mut ws) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut gp, mut gv, mut gg) = (Vec::new(), Vec::new(), Vec::new());
    for (pipeline, changes) in all_changes {
        let changes = match broken.get(pipeline) {
            Some(views) => changes.without(views),
            None => changes,
        };
        let (rows, new_groups) = changes.merged(stored.remove(pipeline).unwrap_or_default());
        wp.extend(std::iter::repeat_n(pipeline, rows.views.len()));
        wv.extend(rows.views);
        wm.extend(rows.minutes);
        wg.extend(rows.groups);
        ws.extend(rows.states);
        for (view, group) in new_groups {
            gp.push(pipeline);
            gv.push(view);
            gg.push(group);
        }
    }
    sqlx::query(
        "WITH new_groups AS ( \
             INSERT INTO view_groups (pipeline_id, view_id, grp) \
             SELECT * FROM UNNEST($6::text[], $7::text[], $8::text[]) ON CONFLICT DO NOTHING \
         ) \
         INSERT INTO view_minutes (pipeline_id, view_id, minute, grp, state) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::bytea[]) \
         ON CONFLICT (pipeline_id, view_id, minute, grp) DO UPDATE SET state = excluded.state",
    )
    .bind(&wp)
    .bind(&wv)
    .bind(&wm)
    .bind(&wg)
    .bind(&ws)
    .bind(&gp)
    .bind(&gv)
    .bind(&gg)
    .execute(&mut *tx)
    .await?;
    Ok(touches)
}

// ---- history ----

/// A view's backfill row as read: spec, generation, until, through, done at.
type BackfillColumns = (String, i64, Option<i64>, Option<i64>, Option<i64>);

/// The state of a view's backfill, read under the pipeline's lock.
struct BackfillRow {
    spec: String,
    generation: i64,
    until: Option<i64>,
    through: Option<i64>,
    done_at: Option<i64>,
}

const BACKFILL_ROW: &str = "SELECT spec, generation, backfill_until, backfill_through, backfilled_at \
    FROM views WHERE pipeline_id = $1 AND view_id = $2";

const BACKFILL_SAVE: &str = "UPDATE views SET backfill_until = $3, backfill_through = $4, \
    backfill_events = backfill_events + $5, backfill_total = COALESCE(backfill_total, $6), backfilled_at = $7 \
    WHERE pipeline_id = $1 AND view_id = $2";

/// Picks the span of the next step from the pipeline's minutes with events (from `through` on,
/// up to `until`): whole minutes adding up to at most `max_events` events (at least one minute).
fn next_span(minutes: &[(i64, i64)], until: i64, max_events: i64) -> Option<(i64, i64, i64)> {
    let mut events = 0;
    let mut end = None;
    for (minute, count) in minutes {
        if *minute > until || (end.is_some() && events + count > max_events) {
            break;
        }
        events += count;
        end = Some(minute + 60_000);
    }
    end.map(|end| (minutes[0].0, end, events))
}

async fn backfill_sqlite(
    tx: &mut SqliteConnection,
    pipeline: &str,
    view: &str,
    generation: i64,
    max_events: i64,
) -> Result<Option<BackfillProgress>, StoreError> {
    let row: Option<BackfillColumns> =
        sqlx::query_as(BACKFILL_ROW).bind(pipeline).bind(view).fetch_optional(&mut *tx).await?;
    let Some((spec, current, until, through, done_at)) = row else { return Ok(None) };
    let row = BackfillRow { spec, generation: current, until, through, done_at };
    if row.generation != generation {
        return Ok(None);
    }
    if row.done_at.is_some() {
        return Ok(Some(progress_sqlite(tx, pipeline, view).await?));
    }
    let spec = spec_from(&row.spec)?;
    let (until, total) = match row.until {
        Some(until) => (until, None),
        None => {
            let (until, total): (Option<i64>, Option<i64>) =
                sqlx::query_as("SELECT max(minute), sum(event_count) FROM event_rollup_minute WHERE pipeline_id = $1")
                    .bind(pipeline)
                    .fetch_one(&mut *tx)
                    .await?;
            (until.unwrap_or(i64::MIN), Some(total.unwrap_or(0)))
        }
    };
    let through = row.through.unwrap_or(i64::MIN);
    let minutes: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT minute, event_count FROM event_rollup_minute WHERE pipeline_id = $1 AND minute >= $2 AND minute <= $3 \
         ORDER BY minute LIMIT 2000",
    )
    .bind(pipeline)
    .bind(through)
    .bind(until)
    .fetch_all(&mut *tx)
    .await?;
    let (next_through, counted, finished) = match next_span(&minutes, until, max_events) {
        None => (through, 0, true),
        Some((start, end, _)) => {
            sqlx::query(
                "DELETE FROM view_minutes WHERE pipeline_id = $1 AND view_id = $2 AND minute >= $3 AND minute < $4",
            )
            .bind(pipeline)
            .bind(view)
            .bind(start)
            .bind(end)
            .execute(&mut *tx)
            .await?;
            let mut groups = groups_sqlite(tx, pipeline).await?;
            let views = vec![(view.to_owned(), spec)];
            let mut only = HashMap::new();
            if let Some(g) = groups.remove(view) {
                only.insert(view.to_owned(), g);
            }
            // Streamed: memory grows with the view's cells, not with the span's events.
            let mut counting = BatchCounter::new(&views, only);
            let mut read = 0i64;
            {
                use futures_util::TryStreamExt;
                let mut events = sqlx::query_as::<_, (i64, String, Option<String>)>(
                    "SELECT event_time, payload, event_type FROM events WHERE pipeline_id = $1 AND event_time >= $2 \
                     AND event_time < $3 ORDER BY rowid",
                )
                .bind(pipeline)
                .bind(start)
                .bind(end)
                .fetch(&mut *tx);
                while let Some((time, payload, event_type)) = events.try_next().await? {
                    counting.add(time, &payload, event_type.as_deref());
                    read += 1;
                }
            }
            let changes = PipelineChanges { per_view: counting.finish() };
            let (rows, new_groups) = changes.merged(HashMap::new());
            write_states_sqlite(tx, pipeline, rows, new_groups).await?;
            (end, read, end > until)
        }
    };
    sqlx::query(BACKFILL_SAVE)
        .bind(pipeline)
        .bind(view)
        .bind(until)
        .bind(next_through)
        .bind(counted)
        .bind(total)
        .bind(finished.then(now_ms))
        .execute(&mut *tx)
        .await?;
    Ok(Some(progress_sqlite(tx, pipeline, view).await?))
}

/// A view's backfill progress, read in the step's transaction.
macro_rules! read_progress {
    ($tx:expr, $pipeline:expr, $view:expr) => {{
        let (events_done, events_total, done_at): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT backfill_events, backfill_total, backfilled_at FROM views WHERE pipeline_id = $1 AND view_id = $2",
        )
        .bind($pipeline)
        .bind($view)
        .fetch_one(&mut *$tx)
        .await?;
        Ok(BackfillProgress { done: done_at.is_some(), events_done, events_total })
    }};
}

async fn progress_sqlite(
    tx: &mut SqliteConnection,
    pipeline: &str,
    view: &str,
) -> Result<BackfillProgress, StoreError> {
    read_progress!(tx, pipeline, view)
}

async fn backfill_pg(
    tx: &mut PgConnection,
    pipeline: &str,
    view: &str,
    generation: i64,
    max_events: i64,
) -> Result<Option<BackfillProgress>, StoreError> {
    // The lock every batch commit takes: no batch of this pipeline commits during the step, and
    // every batch committed before it is seen by the statements below.
    sqlx::query("SELECT 1 FROM pipelines WHERE id = $1 FOR UPDATE").bind(pipeline).execute(&mut *tx).await?;
    let row: Option<BackfillColumns> =
        sqlx::query_as(BACKFILL_ROW).bind(pipeline).bind(view).fetch_optional(&mut *tx).await?;
    let Some((spec, current, until, through, done_at)) = row else { return Ok(None) };
    let row = BackfillRow { spec, generation: current, until, through, done_at };
    if row.generation != generation {
        return Ok(None);
    }
    if row.done_at.is_some() {
        return Ok(Some(progress_pg(tx, pipeline, view).await?));
    }
    let spec = spec_from(&row.spec)?;
    let (until, total) = match row.until {
        Some(until) => (until, None),
        None => {
            let (until, total): (Option<i64>, Option<i64>) = sqlx::query_as(
                "SELECT (extract(epoch FROM max(minute)) * 1000)::int8, sum(event_count)::int8 \
                 FROM event_rollup_minute WHERE pipeline_id = $1",
            )
            .bind(pipeline)
            .fetch_one(&mut *tx)
            .await?;
            (until.unwrap_or(i64::MIN), Some(total.unwrap_or(0)))
        }
    };
    let through = row.through.unwrap_or(i64::MIN);
    let minutes: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT (extract(epoch FROM minute) * 1000)::int8, event_count FROM event_rollup_minute \
         WHERE pipeline_id = $1 AND minute >= to_timestamp($2 / 1000.0) AND minute <= to_timestamp($3 / 1000.0) \
         ORDER BY minute LIMIT 2000",
    )
    .bind(pipeline)
    .bind(through.max(crate::postgres::TIMESTAMP_FLOOR_MS))
    .bind(until.max(crate::postgres::TIMESTAMP_FLOOR_MS))
    .fetch_all(&mut *tx)
    .await?;
    let (next_through, counted, finished) = match next_span(&minutes, until, max_events) {
        None => (through, 0, true),
        Some((start, end, _)) => {
            sqlx::query(
                "DELETE FROM view_minutes WHERE pipeline_id = $1 AND view_id = $2 AND minute >= $3 AND minute < $4",
            )
            .bind(pipeline)
            .bind(view)
            .bind(start)
            .bind(end)
            .execute(&mut *tx)
            .await?;
            let group_rows: Vec<(String, String)> =
                sqlx::query_as("SELECT view_id, grp FROM view_groups WHERE pipeline_id = $1 AND view_id = $2")
                    .bind(pipeline)
                    .bind(view)
                    .fetch_all(&mut *tx)
                    .await?;
            let views = vec![(view.to_owned(), spec)];
            // Streamed: memory grows with the view's cells, not with the span's events.
            let mut counting = BatchCounter::new(&views, group_sets(group_rows));
            let mut read = 0i64;
            {
                use futures_util::TryStreamExt;
                let mut events = sqlx::query_as::<_, (i64, String, Option<String>)>(
                    "SELECT (extract(epoch FROM event_time) * 1000)::int8, payload::text, event_type FROM events \
                     WHERE pipeline_id = $1 AND event_time >= to_timestamp($2 / 1000.0) \
                     AND event_time < to_timestamp($3 / 1000.0) ORDER BY event_time, received_at",
                )
                .bind(pipeline)
                .bind(start)
                .bind(end)
                .fetch(&mut *tx);
                while let Some((time, payload, event_type)) = events.try_next().await? {
                    counting.add(time, &payload, event_type.as_deref());
                    read += 1;
                }
            }
            let changes = PipelineChanges { per_view: counting.finish() };
            let (rows, new_groups) = changes.merged(HashMap::new());
            let (gv, gg): (Vec<String>, Vec<String>) = new_groups.into_iter().unzip();
            sqlx::query(
                "WITH new_groups AS ( \
                     INSERT INTO view_groups (pipeline_id, view_id, grp) \
                     SELECT $1, * FROM UNNEST($6::text[], $7::text[]) ON CONFLICT DO NOTHING \
                 ) \
                 INSERT INTO view_minutes (pipeline_id, view_id, minute, grp, state) \
                 SELECT $1, * FROM UNNEST($2::text[], $3::int8[], $4::text[], $5::bytea[]) \
                 ON CONFLICT (pipeline_id, view_id, minute, grp) DO UPDATE SET state = excluded.state",
            )
            .bind(pipeline)
            .bind(&rows.views)
            .bind(&rows.minutes)
            .bind(&rows.groups)
            .bind(&rows.states)
            .bind(&gv)
            .bind(&gg)
            .execute(&mut *tx)
            .await?;
            (end, read, end > until)
        }
    };
    sqlx::query(BACKFILL_SAVE)
        .bind(pipeline)
        .bind(view)
        .bind(until)
        .bind(next_through)
        .bind(counted)
        .bind(total)
        .bind(finished.then(now_ms))
        .execute(&mut *tx)
        .await?;
    Ok(Some(progress_pg(tx, pipeline, view).await?))
}

async fn progress_pg(tx: &mut PgConnection, pipeline: &str, view: &str) -> Result<BackfillProgress, StoreError> {
    read_progress!(tx, pipeline, view)
}

/// Rows of a view series: every bucket merged over groups (or of one group).
pub fn merge_by_minute(rows: Vec<(i64, String, Cell)>, aggregate: dash_views::Aggregate) -> Vec<(i64, Cell)> {
    let mut by_minute: BTreeMap<i64, Cell> = BTreeMap::new();
    for (minute, _, cell) in rows {
        by_minute.entry(minute).or_insert_with(|| Cell::empty(aggregate)).merge(&cell);
    }
    by_minute.into_iter().collect()
}
