//! Views in the store: their definitions, their per-minute states, and how both stay exact.
//!
//! - **Live.** A batch's transaction, once it holds its pipelines' rows (the lock every batch
//!   commit and every change of views takes), reads the pipeline's `views_version`. A batch that
//!   knows another version reads the definitions again, so a batch counts into exactly the views
//!   that existed when it took the lock. Its new events (never duplicates) are merged into the
//!   stored states of their view, group and minute before it commits.
//! - **History.** Making or changing a view records its cut: which batches had committed. The
//!   events of those batches are its history, counted a bounded step at a time (see
//!   [`crate::view_history`]); every later batch counts live, so each event is counted once.
//! - **States of a newer release** (a rolling upgrade) are left as they are: not read, not
//!   written over, counted in `dash_view_states_skipped_total`. A state that cannot be read at
//!   all starts its view over.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use dash_domain::{ViewTouch, format_ms, now_ms};
use dash_views::{Aggregate, BatchCounter, Cell, CountedView, Groups, UnreadableState, ViewReader, ViewSpec};
use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::Sqlite;
use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Row};

use crate::view_rollups::{GroupsRead, Level, Rolled, base_key, level_changes};
use crate::{BatchEvent, Store, StoreError};

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
    /// Each view's states key (see [`new_state_key`]) and definition.
    views: Vec<(String, ViewSpec)>,
    /// Each view's name, by states key.
    names: HashMap<String, String>,
    reader: ViewReader,
    /// The views with levels started (see [`crate::view_rollups`]), by states key: aggregate and
    /// how far each level is rolled.
    levels: HashMap<String, (Aggregate, Rolled)>,
}

impl PipelineViews {
    /// `views`: name, states key, definition; `rollups`: states key, level, rolled to.
    fn new(version: i64, views: Vec<(String, String, ViewSpec)>, rollups: Vec<(String, String, i64)>) -> Self {
        let mut names = HashMap::with_capacity(views.len());
        let mut aggregates = HashMap::with_capacity(views.len());
        let views: Vec<(String, ViewSpec)> = views
            .into_iter()
            .map(|(name, key, spec)| {
                names.insert(key.clone(), name);
                aggregates.insert(key.clone(), spec.aggregate);
                (key, spec)
            })
            .collect();
        let mut by_key: HashMap<String, Vec<(String, i64)>> = HashMap::new();
        for (key, level, to) in rollups {
            by_key.entry(key).or_default().push((level, to));
        }
        let levels = by_key
            .into_iter()
            .filter_map(|(key, rows)| {
                let rolled = Rolled::from_rows(rows);
                let aggregate = *aggregates.get(&key)?;
                (!rolled.is_empty()).then_some((key, (aggregate, rolled)))
            })
            .collect();
        let reader = ViewReader::new(&views);
        Self { version, views, names, reader, levels }
    }
}

/// A key for a view's states, new each time the view is made or starts over: the states of its
/// earlier generations (or of a view of the same name deleted before) are another key's, retired
/// and deleted later in steps by maintenance, never under the pipeline's lock. Views from before
/// keys have their name as key.
fn new_state_key(name: &str) -> String {
    format!("{name}.{}", uuid::Uuid::now_v7().simple())
}

/// The definitions each pipeline's batches count into, by `views_version`, and each pipeline's
/// views' groups, by `groups_tag`; shared by a store's clones. A stale entry costs one read:
/// every batch checks the version and the tag under its lock.
#[derive(Clone, Default)]
pub(crate) struct ViewCache {
    definitions: Arc<Mutex<HashMap<String, Arc<PipelineViews>>>>,
    groups: Arc<Mutex<HashMap<String, TaggedGroups>>>,
}

/// A pipeline's views' groups (by view) as stored under a groups tag.
type TaggedGroups = (i64, HashMap<String, Groups>);

/// Pipelines a [`ViewCache`] keeps at most (of each kind); past it, it starts empty again.
const CACHED_PIPELINES: usize = 10_000;

impl ViewCache {
    fn get(&self, pipeline: &str, version: i64) -> Option<Arc<PipelineViews>> {
        let cache = self.definitions.lock();
        cache.get(pipeline).filter(|v| v.version == version).cloned()
    }

    fn put(&self, pipeline: &str, views: PipelineViews) -> Arc<PipelineViews> {
        let views = Arc::new(views);
        let mut cache = self.definitions.lock();
        if cache.len() > CACHED_PIPELINES {
            cache.clear();
        }
        cache.insert(pipeline.to_owned(), views.clone());
        views
    }

    /// The pipeline's views' groups as stored under `tag` (clones share them).
    fn groups(&self, pipeline: &str, tag: i64) -> Option<HashMap<String, Groups>> {
        let cache = self.groups.lock();
        cache.get(pipeline).filter(|(kept, _)| *kept == tag).map(|(_, groups)| groups.clone())
    }

    fn put_groups(&self, pipeline: &str, tag: i64, groups: HashMap<String, Groups>) {
        let mut cache = self.groups.lock();
        if cache.len() > CACHED_PIPELINES {
            cache.clear();
        }
        cache.insert(pipeline.to_owned(), (tag, groups));
    }

    /// After a batch that committed under `tag` and recorded `added` (view, group) as `new_tag`:
    /// the groups stored now. Kept only if the batch commits, since only then does any batch
    /// read `new_tag`.
    fn settle_groups(&self, pipeline: &str, base: &HashMap<String, Groups>, added: &[(String, String)], new_tag: i64) {
        let mut by_view: HashMap<&str, Vec<String>> = HashMap::new();
        for (view, group) in added {
            by_view.entry(view.as_str()).or_default().push(group.clone());
        }
        let mut settled = base.clone();
        for (view, groups) in by_view {
            let entry = settled.entry(view.to_owned()).or_default();
            *entry = entry.with_added(&groups);
        }
        self.put_groups(pipeline, new_tag, settled);
    }
}

/// A new tag for a pipeline's groups, set whenever they change: random (a v7 UUID's 62 random
/// bits and its variant), so a tag set by a transaction that rolled back is never read.
fn new_groups_tag() -> i64 {
    uuid::Uuid::now_v7().as_u64_pair().1 as i64
}

/// Records a change of a pipeline's groups.
const SET_GROUPS_TAG: &str = "UPDATE pipelines SET groups_tag = $2 WHERE id = $1";

/// States to write: view, minute, group, encoded cell.
#[derive(Default)]
pub(crate) struct StateRows {
    views: Vec<String>,
    minutes: Vec<i64>,
    groups: Vec<String>,
    states: Vec<Vec<u8>>,
}

impl StateRows {
    pub(crate) fn push(&mut self, view: &str, minute: i64, group: String, state: Vec<u8>) {
        self.views.push(view.to_owned());
        self.minutes.push(minute);
        self.groups.push(group);
        self.states.push(state);
    }
}

/// A stored state's key: view, minute, group.
pub(crate) type StateKey = (String, i64, String);

/// A stored state as read back: view, minute, group, bytes.
pub(crate) type StoredRow = (String, i64, String, Vec<u8>);

/// Changes of one pipeline's batch (or history step), per view, with the groups first seen.
pub(crate) struct PipelineChanges {
    pub(crate) per_view: Vec<CountedView>,
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

    /// Leaves out the views in `broken` (their stored states could not be read), their levels
    /// with them.
    fn without(mut self, broken: &HashSet<String>) -> Self {
        self.per_view.retain(|counted| !broken.contains(base_key(&counted.view)));
        self
    }

    /// Adds what the views' levels gain from these changes (events before a level's
    /// `rolled_to`, see [`crate::view_rollups`]).
    fn with_levels(mut self, views: &PipelineViews) -> Self {
        if !views.levels.is_empty() {
            let levels = level_changes(&self.per_view, &views.levels);
            self.per_view.extend(levels);
        }
        self
    }

    /// Each view's span of minutes changed, by name (`names`: by states key).
    fn touches(&self, names: &HashMap<String, String>) -> Vec<ViewTouch> {
        self.per_view
            .iter()
            .filter_map(|counted| {
                let view = names.get(&counted.view).cloned().unwrap_or_else(|| counted.view.clone());
                counted.changes.span().map(|(from, to)| ViewTouch { view, from, to })
            })
            .collect()
    }

    /// The keys of the states the changes touch: view, minute, group.
    pub(crate) fn keys(&self) -> impl Iterator<Item = (&str, i64, &str)> {
        self.per_view.iter().flat_map(|CountedView { view, changes, .. }| {
            changes.keys().into_iter().map(move |(minute, group)| (view.as_str(), minute, group))
        })
    }

    /// Merges the changes into `stored` (the states already there, by view, minute and group),
    /// leaving out the keys in `newer`: states of a newer release stay as they are.
    pub(crate) fn merged(
        self,
        mut stored: HashMap<StateKey, Cell>,
        newer: &HashSet<StateKey>,
    ) -> (StateRows, Vec<(String, String)>) {
        let mut rows = StateRows { views: Vec::new(), minutes: Vec::new(), groups: Vec::new(), states: Vec::new() };
        let mut new_groups = Vec::new();
        for CountedView { view, changes, new_groups: added } in self.per_view {
            for ((minute, group), cell) in changes.into_cells() {
                let key = (view.clone(), minute, group);
                if newer.contains(&key) {
                    continue;
                }
                let state = merged_over(&mut stored, &key, &cell);
                let (_, _, group) = key;
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

/// A state's bytes once `cell` is merged over what is stored under `key` (taken from `stored`).
pub(crate) fn merged_over(stored: &mut HashMap<StateKey, Cell>, key: &StateKey, cell: &Cell) -> Vec<u8> {
    match stored.remove(key) {
        Some(mut old) => {
            old.merge(cell);
            old.encode()
        }
        None => cell.encode(),
    }
}

/// States as read back for merging: the readable ones by key, the keys of states a newer
/// release wrote (left alone), and the views with a state that cannot be read at all.
#[derive(Default)]
pub(crate) struct StoredStates {
    pub(crate) cells: HashMap<StateKey, Cell>,
    pub(crate) newer: HashSet<StateKey>,
    pub(crate) broken: HashSet<String>,
}

/// Decodes a pipeline's stored states (view, minute, group, bytes) for merging.
pub(crate) fn decode_stored(pipeline: &str, rows: impl IntoIterator<Item = StoredRow>) -> StoredStates {
    let mut stored = StoredStates::default();
    for (view, minute, group, state) in rows {
        match Cell::decode(&state) {
            Ok(cell) => {
                stored.cells.insert((view, minute, group), cell);
            }
            Err(err @ UnreadableState::Newer(_)) => {
                newer_state_skipped(pipeline, &view, &err);
                stored.newer.insert((view, minute, group));
            }
            Err(err) => {
                tracing::error!(pipeline, view, error = %err, "a view's stored state is unreadable; the view is computed again");
                stored.broken.insert(base_key(&view).to_owned());
            }
        }
    }
    stored
}

/// A state written by a newer release, met and left alone (a rolling upgrade under way).
pub(crate) fn newer_state_skipped(pipeline: &str, view: &str, err: &UnreadableState) {
    metrics::counter!("dash_view_states_skipped_total").increment(1);
    tracing::warn!(pipeline, view, error = %err, "a view state of a newer release is left as it is");
}

pub(crate) fn spec_from(text: &str) -> Result<ViewSpec, StoreError> {
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

    /// A view's stored minutes in `[from, to)`: (minute, group, state); one group's only if
    /// `group` is given. Refused ([`StoreError::ReadTooLarge`]) past `limit` states or
    /// [`MAX_VIEW_READ_BYTES`] of them.
    pub async fn view_minutes(
        &self,
        pipeline: &str,
        view: &str,
        from_ms: i64,
        to_ms: i64,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(i64, String, Cell)>, StoreError> {
        let groups = group.map_or(GroupsRead::Each, GroupsRead::One);
        // Buckets of a minute: no level answers them.
        self.view_states(pipeline, view, from_ms, to_ms, Some(60_000), groups, limit).await
    }

    /// The states stored under `key` (a view's or one of its levels') in `[from, to)`, one
    /// group's only if `group` is given, into `read`. Read as a stream.
    pub(crate) async fn read_states(
        &self,
        key: &str,
        from_ms: i64,
        to_ms: i64,
        group: Option<&str>,
        read: &mut StatesRead<'_>,
    ) -> Result<(), StoreError> {
        use futures_util::TryStreamExt;
        // One statement with and one without the group, rather than `($5 IS NULL OR grp = $5)`:
        // PostgreSQL's generic plan for that (chosen after a few runs of a prepared statement)
        // cannot read along the group's index, and a group's series then reads every group.
        const ALL: &str = "SELECT minute, grp, state FROM view_minutes \
            WHERE pipeline_id = $1 AND view_id = $2 AND minute >= $3 AND minute < $4 ORDER BY minute";
        const ONE: &str = "SELECT minute, grp, state FROM view_minutes \
            WHERE pipeline_id = $1 AND view_id = $2 AND grp = $5 AND minute >= $3 AND minute < $4 ORDER BY minute";
        let sql = if group.is_some() { ONE } else { ALL };
        macro_rules! stream_into_read {
            ($pool:expr) => {{
                let query = sqlx::query_as(sql).bind(read.pipeline).bind(key).bind(from_ms).bind(to_ms);
                let query = match group {
                    Some(group) => query.bind(group),
                    None => query,
                };
                let mut rows = query.fetch($pool);
                while let Some(row) = rows.try_next().await? {
                    read.keep(row)?;
                }
            }};
        }
        match self {
            Store::Sqlite(s) => stream_into_read!(&s.readers),
            Store::Postgres(s) => stream_into_read!(&s.pool),
        }
        Ok(())
    }
}

/// The states of one read of a view, decoded, within its bounds.
pub(crate) struct StatesRead<'a> {
    pipeline: &'a str,
    view: &'a str,
    limit: usize,
    bytes: usize,
    states: Vec<(i64, String, Cell)>,
}

impl<'a> StatesRead<'a> {
    pub(crate) fn new(pipeline: &'a str, view: &'a str, limit: usize) -> Self {
        Self { pipeline, view, limit, bytes: 0, states: Vec::new() }
    }

    fn keep(&mut self, (minute, grp, state): (i64, String, Vec<u8>)) -> Result<(), StoreError> {
        self.bytes += state.len() + grp.len();
        if self.states.len() >= self.limit || self.bytes > MAX_VIEW_READ_BYTES {
            return Err(StoreError::ReadTooLarge);
        }
        match Cell::decode(&state) {
            Ok(cell) => self.states.push((minute, grp, cell)),
            // A newer release's state: this release cannot read it, so it is left out.
            Err(err @ UnreadableState::Newer(_)) => newer_state_skipped(self.pipeline, self.view, &err),
            Err(err) => return Err(StoreError::UnreadableView(err.to_string())),
        }
        Ok(())
    }

    pub(crate) fn into_states(self) -> Vec<(i64, String, Cell)> {
        self.states
    }
}

/// Rows one statement of [`Store::purge_retired_states`] deletes at most: each its own short
/// transaction, so batches wait for none of it.
const PURGE_CHUNK: i64 = 10_000;

impl Store {
    /// Deletes the states and groups of retired keys (views deleted or started over), a chunk
    /// at a time, oldest first; how many states went.
    pub(crate) async fn purge_retired_states(&self) -> Result<u64, StoreError> {
        const RETIRED: &str =
            "SELECT pipeline_id, state_key FROM view_states_retired ORDER BY retired_at, state_key LIMIT 100";
        const STATES: &str = "DELETE FROM view_minutes WHERE (pipeline_id, view_id, minute, grp) IN \
            (SELECT pipeline_id, view_id, minute, grp FROM view_minutes WHERE pipeline_id = $1 AND view_id = $2 LIMIT $3)";
        const GROUPS: &str = "DELETE FROM view_groups WHERE pipeline_id = $1 AND view_id = $2";
        const ROLLUPS: &str = "DELETE FROM view_rollups WHERE pipeline_id = $1 AND state_key = $2";
        const DONE: &str = "DELETE FROM view_states_retired WHERE pipeline_id = $1 AND state_key = $2";
        let mut purged = 0;
        let retired: Vec<(String, String)> =
            on_backend!(self, writer, |pool| sqlx::query_as(RETIRED).fetch_all(pool).await?);
        for (pipeline, key) in retired {
            // Its minutes and every level's states.
            let keys = std::iter::once(key.clone()).chain(Level::ALL.map(|level| level.key(&key)));
            for states_key in keys {
                loop {
                    let deleted = on_backend!(self, writer, |pool| {
                        sqlx::query(STATES)
                            .bind(&pipeline)
                            .bind(&states_key)
                            .bind(PURGE_CHUNK)
                            .execute(pool)
                            .await?
                            .rows_affected()
                    });
                    purged += deleted;
                    if deleted < PURGE_CHUNK as u64 {
                        break;
                    }
                }
            }
            for sql in [GROUPS, ROLLUPS, DONE] {
                on_backend!(self, writer, |pool| {
                    sqlx::query(sql).bind(&pipeline).bind(&key).execute(pool).await?;
                });
            }
        }
        Ok(purged)
    }
}

/// Every view (its states key), for [`view_cutoffs`].
pub(crate) const VIEWS_KEPT: &str = "SELECT pipeline_id, state_key, spec FROM views";
/// A view's minutes before a cutoff go: ($1 pipeline, $2 view, $3 cutoff).
pub(crate) const PRUNE_STATES: &str =
    "DELETE FROM view_minutes WHERE pipeline_id = $1 AND view_id = $2 AND minute < $3";

/// Each view (rows of [`VIEWS_KEPT`]) with the time before which its minutes go: its `keep`, or
/// without one its pipeline's retention cutoff (`cutoffs`, as maintenance worked it out); and
/// each of its levels' keys with the time before which their buckets go (those that end by the
/// cutoff).
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
            let levels = Level::ALL.map(|level| (level.key(&view), cutoff.saturating_sub(level.width() - 1)));
            Some(
                std::iter::once((view, cutoff)).chain(levels).map(move |(key, cutoff)| (pipeline.clone(), key, cutoff)),
            )
        })
        .flatten()
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

/// Retires a view's states and groups (with its pipeline's row locked, before its row changes):
/// its key goes on the list maintenance deletes in steps ([`Store::purge_retired_states`]), so
/// forgetting a view of any size is one row here.
macro_rules! retire_states {
    ($tx:expr, $pipeline:expr, $name:expr) => {
        sqlx::query(
            "INSERT INTO view_states_retired (pipeline_id, state_key, retired_at) \
             SELECT pipeline_id, state_key, $3 FROM views WHERE pipeline_id = $1 AND view_id = $2 \
             ON CONFLICT DO NOTHING",
        )
        .bind($pipeline)
        .bind($name)
        .bind(now_ms())
        .execute(&mut *$tx)
        .await?;
        sqlx::query(SET_GROUPS_TAG).bind($pipeline).bind(new_groups_tag()).execute(&mut *$tx).await?;
    };
}

/// A view's cut (see [`crate::view_history`]) taken now, in SQL: on SQLite the number of the last
/// batch written; on PostgreSQL the snapshot of this statement, taken with the pipeline's row
/// locked by an earlier one, so every batch committed before this change is in it.
const SQLITE_CUT: &str = "(SELECT CAST(seq AS TEXT) FROM event_batches WHERE id = 1)";
const POSTGRES_CUT: &str = "pg_current_snapshot()::text";

/// Starts a view over (a new generation, its states gone, its history pending from a new cut),
/// with a new definition or (`None`) the one it has: a change of what it holds, or states that
/// cannot be read. Run with its pipeline's row locked.
macro_rules! restart_view {
    ($tx:expr, $cut:expr, $pipeline:expr, $name:expr, $spec:expr, $now:expr) => {{
        retire_states!($tx, $pipeline, $name);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE views SET spec = COALESCE($3, spec), updated_at = $4, generation = generation + 1, \
             backfill_until = NULL, backfill_through = NULL, backfill_events = 0, backfill_total = NULL, \
             backfilled_at = NULL, history_cut = {}, history_mark_time = NULL, history_mark_key = NULL, \
             history_restart = FALSE, state_key = $5 WHERE pipeline_id = $1 AND view_id = $2",
            $cut
        )))
        .bind($pipeline)
        .bind($name)
        .bind($spec)
        .bind($now)
        .bind(new_state_key($name))
        .execute(&mut *$tx)
        .await?;
    }};
}

/// Makes batches read a pipeline's definitions (and their states keys) again.
pub(crate) const RAISE_VIEWS_VERSION: &str = "UPDATE pipelines SET views_version = views_version + 1 WHERE id = $1";

/// Asks for a view to be started over (a state of it cannot be read): its next history step
/// does it, in a transaction of its own. A batch that finds such a state leaves the view out;
/// its events are in the new cut's history. The generation rises now (once, however many batches
/// ask), so the job scheduler sees a history to run (its jobs are one per generation) and a step
/// of the old one stops.
pub(crate) const REQUEST_RESTART: &str = "UPDATE views SET backfilled_at = NULL, \
    generation = generation + CASE WHEN history_restart THEN 0 ELSE 1 END, history_restart = TRUE \
    WHERE pipeline_id = $1 AND state_key = $2";

/// Starts a view over with the definition it has (its states could not be read), on SQLite.
pub(crate) async fn restart_sql_sqlite(
    tx: &mut SqliteConnection,
    pipeline: &str,
    view: &str,
) -> Result<(), StoreError> {
    restart_view!(tx, SQLITE_CUT, pipeline, view, None::<&str>, now_ms());
    sqlx::query(RAISE_VIEWS_VERSION).bind(pipeline).execute(&mut *tx).await?;
    Ok(())
}

/// Starts a view over with the definition it has (its states could not be read), on PostgreSQL.
pub(crate) async fn restart_sql_pg(tx: &mut PgConnection, pipeline: &str, view: &str) -> Result<(), StoreError> {
    restart_view!(tx, POSTGRES_CUT, pipeline, view, None::<&str>, now_ms());
    sqlx::query(RAISE_VIEWS_VERSION).bind(pipeline).execute(&mut *tx).await?;
    Ok(())
}

/// Writes a view change decided by [`decide`]: a new or recomputed view starts its history from
/// a cut taken now, with nothing stored; the pipeline's `views_version` rises so batches read the
/// definitions again.
macro_rules! apply_view_write {
    ($tx:expr, $cut:expr, $pipeline:expr, $name:expr, $text:expr, $write:expr, $now:expr) => {{
        match $write {
            ViewWrite::Unchanged => return Ok(()),
            ViewWrite::Created => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO views (pipeline_id, view_id, spec, generation, created_at, updated_at, history_cut, \
                     state_key) VALUES ($1, $2, $3, 1, $4, $4, {}, $5)",
                    $cut
                )))
                .bind($pipeline)
                .bind($name)
                .bind($text)
                .bind($now)
                .bind(new_state_key($name))
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
            ViewWrite::Recomputing => restart_view!($tx, $cut, $pipeline, $name, Some($text), $now),
        }
        sqlx::query(RAISE_VIEWS_VERSION).bind($pipeline).execute(&mut *$tx).await?;
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
    apply_view_write!(tx, SQLITE_CUT, pipeline, name, text, write, now)
}

async fn apply_pg(
    tx: &mut PgConnection,
    pipeline: &str,
    name: &str,
    text: &str,
    write: ViewWrite,
    now: i64,
) -> Result<(), StoreError> {
    apply_view_write!(tx, POSTGRES_CUT, pipeline, name, text, write, now)
}

/// Deletes a view, its states and groups, and raises its pipeline's `views_version`; true when
/// there was one.
macro_rules! delete_view_rows {
    ($tx:expr, $pipeline:expr, $name:expr) => {{
        retire_states!($tx, $pipeline, $name);
        let deleted = sqlx::query("DELETE FROM views WHERE pipeline_id = $1 AND view_id = $2")
            .bind($pipeline)
            .bind($name)
            .execute(&mut *$tx)
            .await?
            .rows_affected()
            > 0;
        if deleted {
            sqlx::query(RAISE_VIEWS_VERSION).bind($pipeline).execute(&mut *$tx).await?;
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
fn readable_views(pipeline: &str, rows: Vec<(String, String, String)>) -> Vec<(String, String, ViewSpec)> {
    rows.into_iter()
        .filter_map(|(view, key, spec)| match spec_from(&spec) {
            Ok(spec) => Some((view, key, spec)),
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
    (version, groups_tag): (i64, i64),
    fresh: impl Iterator<Item = (i64, &'e str, Option<&'e str>)>,
) -> Result<Vec<ViewTouch>, StoreError> {
    let views = match cache.get(pipeline, version) {
        Some(views) => views,
        None => {
            let rows: Vec<(String, String, String)> =
                sqlx::query_as("SELECT view_id, state_key, spec FROM views WHERE pipeline_id = $1 ORDER BY view_id")
                    .bind(pipeline)
                    .fetch_all(&mut *tx)
                    .await?;
            let views = readable_views(pipeline, rows);
            let rollups: Vec<(String, String, i64)> =
                sqlx::query_as("SELECT state_key, level, rolled_to FROM view_rollups WHERE pipeline_id = $1")
                    .bind(pipeline)
                    .fetch_all(&mut *tx)
                    .await?;
            cache.put(pipeline, PipelineViews::new(version, views, rollups))
        }
    };
    if views.views.is_empty() {
        return Ok(Vec::new());
    }
    let groups = match cache.groups(pipeline, groups_tag) {
        Some(groups) => groups,
        None => {
            let groups = groups_sqlite(tx, pipeline).await?;
            cache.put_groups(pipeline, groups_tag, groups.clone());
            groups
        }
    };
    let changes = PipelineChanges::compute(&views, groups.clone(), fresh);
    let touches = changes.touches(&views.names);
    let changes = changes.with_levels(&views);
    // The states already stored under the changed keys, a few statements for the whole batch.
    let keys: Vec<(&str, i64, &str)> = changes.keys().collect();
    let stored = stored_states_sqlite(tx, pipeline, &keys).await?;
    drop(keys);
    let StoredStates { cells, newer, broken } = decode_stored(pipeline, stored);
    let changes = changes.without(&broken);
    for view in &broken {
        sqlx::query(REQUEST_RESTART).bind(pipeline).bind(view).execute(&mut *tx).await?;
    }
    let (rows, new_groups) = changes.merged(cells, &newer);
    if let Some((tag, added)) = write_states_sqlite(tx, pipeline, rows, new_groups).await? {
        cache.settle_groups(pipeline, &groups, &added, tag);
    }
    Ok(touches)
}

/// The states stored under `keys` (view, minute, group) of a pipeline, a few statements at most.
pub(crate) async fn stored_states_sqlite(
    tx: &mut SqliteConnection,
    pipeline: &str,
    keys: &[(&str, i64, &str)],
) -> Result<Vec<StoredRow>, StoreError> {
    let mut stored = Vec::new();
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
        stored.extend(select.build_query_as::<StoredRow>().fetch_all(&mut *tx).await?);
    }
    Ok(stored)
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

/// Groups a batch or a step recorded, with the pipeline's new groups tag: `None` when none.
pub(crate) type RecordedGroups = Option<(i64, Vec<(String, String)>)>;

/// SQLite: writes a pipeline's states (over what is stored) and records its new groups (view,
/// group), with a new groups tag.
pub(crate) async fn write_states_sqlite(
    tx: &mut SqliteConnection,
    pipeline: &str,
    rows: StateRows,
    new_groups: Vec<(String, String)>,
) -> Result<RecordedGroups, StoreError> {
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
    if new_groups.is_empty() {
        return Ok(None);
    }
    let tag = new_groups_tag();
    sqlx::query(SET_GROUPS_TAG).bind(pipeline).bind(tag).execute(&mut *tx).await?;
    Ok(Some((tag, new_groups)))
}

/// Rows per statement when SQLite reads or writes view states (five parameters a row at most,
/// well within SQLite's bound on parameters).
const SQLITE_ROWS_PER_STATEMENT: usize = 500;

/// PostgreSQL: counts each pipeline's new events of a committing batch into its views.
/// `versions`: each locked pipeline's `views_version`; `events` and `fresh` as staged.
pub(crate) async fn count_batch_pg(
    tx: &mut PgConnection,
    cache: &ViewCache,
    versions: &HashMap<String, (i64, i64)>,
    events: &[BatchEvent],
    fresh: &[u32],
) -> Result<HashMap<String, Vec<ViewTouch>>, StoreError> {
    let mut with_views: Vec<(&str, Arc<PipelineViews>)> = Vec::new();
    let mut to_load: Vec<(&str, i64)> = Vec::new();
    for (pipeline, (version, _)) in versions {
        match cache.get(pipeline, *version) {
            Some(views) if views.views.is_empty() => {}
            Some(views) => with_views.push((pipeline, views)),
            None => to_load.push((pipeline, *version)),
        }
    }
    if !to_load.is_empty() {
        let ids: Vec<&str> = to_load.iter().map(|(p, _)| *p).collect();
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT pipeline_id, view_id, state_key, spec FROM views WHERE pipeline_id = ANY($1) \
             ORDER BY pipeline_id, view_id",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut loaded: HashMap<String, Vec<(String, String, ViewSpec)>> = HashMap::new();
        let mut specs: HashMap<String, Vec<(String, String, String)>> = HashMap::new();
        for (pipeline, view, key, spec) in rows {
            specs.entry(pipeline).or_default().push((view, key, spec));
        }
        for (pipeline, rows) in specs {
            let views = readable_views(&pipeline, rows);
            loaded.insert(pipeline, views);
        }
        let rollup_rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT pipeline_id, state_key, level, rolled_to FROM view_rollups WHERE pipeline_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut rollups: HashMap<String, Vec<(String, String, i64)>> = HashMap::new();
        for (pipeline, key, level, to) in rollup_rows {
            rollups.entry(pipeline).or_default().push((key, level, to));
        }
        for (pipeline, version) in to_load {
            let views = PipelineViews::new(
                version,
                loaded.remove(pipeline).unwrap_or_default(),
                rollups.remove(pipeline).unwrap_or_default(),
            );
            let views = cache.put(pipeline, views);
            if !views.views.is_empty() {
                with_views.push((pipeline, views));
            }
        }
    }
    let mut touches = HashMap::new();
    if with_views.is_empty() {
        return Ok(touches);
    }
    // Each pipeline's groups: as cached under its tag, else read (in one round trip).
    let tag_of = |pipeline: &str| versions.get(pipeline).map_or(0, |(_, tag)| *tag);
    let mut groups_of: HashMap<&str, HashMap<String, Groups>> = HashMap::new();
    let mut missing: Vec<&str> = Vec::new();
    for (pipeline, _) in &with_views {
        match cache.groups(pipeline, tag_of(pipeline)) {
            Some(groups) => {
                groups_of.insert(pipeline, groups);
            }
            None => missing.push(pipeline),
        }
    }
    if !missing.is_empty() {
        let group_rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT pipeline_id, view_id, grp FROM view_groups WHERE pipeline_id = ANY($1)")
                .bind(&missing)
                .fetch_all(&mut *tx)
                .await?;
        let mut rows_of: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (pipeline, view, group) in group_rows {
            rows_of.entry(pipeline).or_default().push((view, group));
        }
        for pipeline in missing {
            let groups = group_sets(rows_of.remove(pipeline).unwrap_or_default());
            cache.put_groups(pipeline, tag_of(pipeline), groups.clone());
            groups_of.insert(pipeline, groups);
        }
    }
    let mut all_changes = Vec::new();
    for (pipeline, views) in &with_views {
        let groups = groups_of.get(*pipeline).cloned().unwrap_or_default();
        let events_of = fresh
            .iter()
            .map(|i| &events[*i as usize])
            .filter(|e| &*e.pipeline == *pipeline)
            .map(|e| (e.event.time_ms, e.event.payload.as_str(), e.event.event_type.as_deref()));
        let changes = PipelineChanges::compute(views, groups, events_of);
        touches.insert((*pipeline).to_owned(), changes.touches(&views.names));
        all_changes.push((*pipeline, changes.with_levels(views)));
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
    let mut rows_of: HashMap<String, Vec<StoredRow>> = HashMap::new();
    for (pipeline, view, minute, group, state) in stored_rows {
        rows_of.entry(pipeline).or_default().push((view, minute, group, state));
    }
    let mut stored: HashMap<String, StoredStates> =
        rows_of.into_iter().map(|(pipeline, rows)| (pipeline.clone(), decode_stored(&pipeline, rows))).collect();
    for (pipeline, of_pipeline) in &stored {
        for view in &of_pipeline.broken {
            sqlx::query(REQUEST_RESTART).bind(pipeline).bind(view).execute(&mut *tx).await?;
        }
    }
    let (mut wp, mut wv, mut wm, mut wg, mut ws) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut gp, mut gv, mut gg) = (Vec::new(), Vec::new(), Vec::new());
    // Pipelines whose groups this batch records: their new tags, and what they hold after it.
    let (mut tagged, mut tags) = (Vec::new(), Vec::new());
    for (pipeline, changes) in all_changes {
        let StoredStates { cells, newer, broken } = stored.remove(pipeline).unwrap_or_default();
        let (rows, new_groups) = changes.without(&broken).merged(cells, &newer);
        wp.extend(std::iter::repeat_n(pipeline, rows.views.len()));
        wv.extend(rows.views);
        wm.extend(rows.minutes);
        wg.extend(rows.groups);
        ws.extend(rows.states);
        if !new_groups.is_empty() {
            let tag = new_groups_tag();
            cache.settle_groups(pipeline, &groups_of.remove(pipeline).unwrap_or_default(), &new_groups, tag);
            tagged.push(pipeline);
            tags.push(tag);
        }
        for (view, group) in new_groups {
            gp.push(pipeline);
            gv.push(view);
            gg.push(group);
        }
    }
    if !tagged.is_empty() {
        sqlx::query("UPDATE pipelines p SET groups_tag = t.tag FROM UNNEST($1::text[], $2::int8[]) AS t(id, tag) WHERE p.id = t.id")
            .bind(&tagged)
            .bind(&tags)
            .execute(&mut *tx)
            .await?;
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

/// PostgreSQL: the states stored under `keys` (view, minute, group) of a pipeline.
pub(crate) async fn stored_states_pg(
    tx: &mut PgConnection,
    pipeline: &str,
    keys: &[(&str, i64, &str)],
) -> Result<Vec<StoredRow>, StoreError> {
    let (mut kv, mut km, mut kg) = (Vec::new(), Vec::new(), Vec::new());
    for (view, minute, group) in keys {
        kv.push(*view);
        km.push(*minute);
        kg.push(*group);
    }
    Ok(sqlx::query_as(
        "SELECT m.view_id, m.minute, m.grp, m.state FROM view_minutes m \
         JOIN UNNEST($2::text[], $3::int8[], $4::text[]) AS k(v, mi, g) \
         ON m.pipeline_id = $1 AND m.view_id = k.v AND m.minute = k.mi AND m.grp = k.g",
    )
    .bind(pipeline)
    .bind(&kv)
    .bind(&km)
    .bind(&kg)
    .fetch_all(&mut *tx)
    .await?)
}

/// PostgreSQL: writes a pipeline's states (over what is stored) and records its new groups.
pub(crate) async fn write_states_pg(
    tx: &mut PgConnection,
    pipeline: &str,
    rows: StateRows,
    new_groups: Vec<(String, String)>,
) -> Result<RecordedGroups, StoreError> {
    let (gv, gg): (Vec<&str>, Vec<&str>) = new_groups.iter().map(|(v, g)| (v.as_str(), g.as_str())).unzip();
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
    if new_groups.is_empty() {
        return Ok(None);
    }
    let tag = new_groups_tag();
    sqlx::query(SET_GROUPS_TAG).bind(pipeline).bind(tag).execute(&mut *tx).await?;
    Ok(Some((tag, new_groups)))
}

/// Rows of a view series: every bucket merged over groups (or of one group).
pub fn merge_by_minute(rows: Vec<(i64, String, Cell)>, aggregate: dash_views::Aggregate) -> Vec<(i64, Cell)> {
    let mut by_minute: BTreeMap<i64, Cell> = BTreeMap::new();
    for (minute, _, cell) in rows {
        by_minute.entry(minute).or_insert_with(|| Cell::empty(aggregate)).merge(&cell);
    }
    by_minute.into_iter().collect()
}
