//! A view's states at coarser levels, so that a read over days or months merges hundreds of
//! states rather than hundreds of thousands.
//!
//! - **Levels.** Above a view's minutes (one state per minute and group) there are five: minutes
//!   of all groups together, hours of each group and of all, days of each group and of all. Each
//!   is fed by the one below it ([`Level::source`]). A view without `group_by` has one group, so
//!   it keeps only the hours and days of all. Their states are kept with the minutes', in
//!   `view_minutes`, under the view's states key with the level's suffix (`<key>@h`), each at
//!   its bucket's start. Minutes stay as they are: a level is a second copy for fast reads.
//! - **Rolled to.** Each level has an instant, `rolled_to` (`view_rollups`): it holds everything
//!   its source held before it. The rollup job (`Job::Rollup`) moves it forward a step at a time:
//!   a step reads at most [`ROLLUP_STEP_STATES`] of the source's states after it, merges them
//!   into the level's buckets and moves it, in one transaction holding the pipeline's lock.
//!   Levels fed by the minutes move by whole hours, an hour or two behind them ([`Level::lag`],
//!   [`limit_of`]), so that each moves at most once an hour once caught up, and the
//!   events of the last hour, late ones included, are counted into their minutes only.
//! - **An event before `rolled_to`** (a late one, or a replay after an outage) is counted by its
//!   batch into its minute and into every level already past it, in the same transaction: the
//!   batch knows each level's `rolled_to` from the definitions it caches by `views_version`,
//!   which each step raises. So a level never misses an event nor counts one twice.
//! - **A read** ([`Store::view_states`]) takes each part of its range from the coarsest level
//!   whose buckets are complete there and fall whole in the read's buckets, and the rest from
//!   finer levels, down to the minutes.
//! - **History first.** A view's levels start only once its history is done; a view started over
//!   gets a new states key, whose levels start from nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dash_views::{Aggregate, Cell, CountedView, GROUP_ALL, UnreadableState};

use crate::view_history::StatesTx;
use crate::views::{StateRows, StoredStates, decode_stored, merged_over, newer_state_skipped, spec_from};
use crate::{Store, StoreError};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// Each level of a view ($2: its states key) and how far it is rolled.
pub(crate) const ROLLED: &str = "SELECT level, rolled_to FROM view_rollups WHERE pipeline_id = $1 AND state_key = $2";

/// Source states one rollup step reads at most, under its pipeline's lock.
pub const ROLLUP_STEP_STATES: i64 = 5_000;

/// A level of a view's states above its minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Level {
    /// Minutes, every group in one.
    MinuteAll,
    Hour,
    /// Hours, every group in one.
    HourAll,
    Day,
    /// Days, every group in one.
    DayAll,
}

impl Level {
    /// Every level, each after its source.
    pub(crate) const ALL: [Level; 5] = [Level::MinuteAll, Level::Hour, Level::HourAll, Level::Day, Level::DayAll];

    /// As stored in `view_rollups.level` and in its states' key.
    fn name(self) -> &'static str {
        match self {
            Level::MinuteAll => "m.all",
            Level::Hour => "h",
            Level::HourAll => "h.all",
            Level::Day => "d",
            Level::DayAll => "d.all",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|level| level.name() == name)
    }

    /// Its buckets' width, ms (aligned to the epoch: UTC hours and days).
    pub(crate) fn width(self) -> i64 {
        match self {
            Level::MinuteAll => MINUTE,
            Level::Hour | Level::HourAll => HOUR,
            Level::Day | Level::DayAll => DAY,
        }
    }

    /// Whether it holds every group in one ([`GROUP_ALL`]).
    pub(crate) fn merges_groups(self) -> bool {
        matches!(self, Level::MinuteAll | Level::HourAll | Level::DayAll)
    }

    /// Whether a view has it: a view without `group_by` has one group, so its minutes are
    /// already all groups together, and its hours and days are its groups'.
    pub(crate) fn kept_for(self, grouped: bool) -> bool {
        grouped || matches!(self, Level::HourAll | Level::DayAll)
    }

    /// The level it is rolled from; `None`: the minutes.
    fn source(self, grouped: bool) -> Option<Level> {
        match self {
            Level::MinuteAll | Level::Hour => None,
            Level::HourAll => grouped.then_some(Level::MinuteAll),
            Level::Day => Some(Level::Hour),
            Level::DayAll => Some(Level::HourAll),
        }
    }

    /// How long after a minute ends a level fed by the minutes takes it in. An event counted
    /// into a minute before that is counted into the level too, so this keeps the batches of
    /// the last hour or two (late events and all) writing their minutes only.
    fn lag(self) -> i64 {
        match self {
            Level::MinuteAll | Level::Hour | Level::HourAll => HOUR,
            Level::Day | Level::DayAll => 0,
        }
    }

    /// Where its states are kept, for a view whose minutes are under `base`.
    pub(crate) fn key(self, base: &str) -> String {
        format!("{base}@{}", self.name())
    }
}

/// The view's states key of a level's key (a key with no level is its own).
pub(crate) fn base_key(key: &str) -> &str {
    key.split_once('@').map_or(key, |(base, _)| base)
}

/// How far each level of a view has been rolled (`rolled_to`, unix ms); a level not there has
/// not started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Rolled(Vec<(Level, i64)>);

impl Rolled {
    /// From `view_rollups` rows (level, rolled_to); a level this release does not know is left out.
    pub(crate) fn from_rows(rows: impl IntoIterator<Item = (String, i64)>) -> Self {
        Self(rows.into_iter().filter_map(|(name, to)| Some((Level::parse(&name)?, to))).collect())
    }

    pub(crate) fn get(&self, level: Level) -> Option<i64> {
        self.0.iter().find(|(l, _)| *l == level).map(|(_, to)| *to)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the levels of the views in `counted` gain from a batch's (or a step's) changes: for each
/// view with levels (`levels`: by states key, its aggregate and how far each is rolled), its
/// changes before each level's `rolled_to`, in the level's buckets.
pub(crate) fn level_changes(
    counted: &[CountedView],
    levels: &HashMap<String, (Aggregate, Rolled)>,
) -> Vec<CountedView> {
    let mut out = Vec::new();
    for view in counted {
        let Some((aggregate, rolled)) = levels.get(&view.view) else { continue };
        for &(level, to) in &rolled.0 {
            let changes = view.changes.rolled(*aggregate, level.width(), level.merges_groups(), to);
            if !changes.is_empty() {
                out.push(CountedView { view: level.key(&view.view), changes, new_groups: Vec::new() });
            }
        }
    }
    out
}

/// Which groups a read wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupsRead<'a> {
    /// Only the view's value over every group: states of merged levels where they answer (the
    /// rows' groups are then [`GROUP_ALL`]), merge the rest.
    Merged,
    /// Each group's.
    Each,
    /// One group's.
    One(&'a str),
}

/// A part of a read: the level it is read from (`None`: the minutes) and its span `[from, to)`.
type Segment = (Option<Level>, i64, i64);

/// Where to read `[from, to)` from: each part from the coarsest of `levels` (coarsest first,
/// with their `rolled_to`) whose buckets are complete there and fall whole in one of the
/// read's buckets (`bucket`: their width and the first one's start; `None`: one for the range),
/// the rest from the minutes.
fn plan(levels: &[(Level, i64)], from: i64, to: i64, bucket: Option<(i64, i64)>) -> Vec<Segment> {
    let mut out = Vec::new();
    cover(levels, from, to, bucket, &mut out);
    out
}

fn cover(levels: &[(Level, i64)], from: i64, to: i64, bucket: Option<(i64, i64)>, out: &mut Vec<Segment>) {
    if from >= to {
        return;
    }
    let Some((&(level, rolled_to), finer)) = levels.split_first() else {
        out.push((None, from, to));
        return;
    };
    let width = level.width();
    let fits = bucket.is_none_or(|(size, origin)| size % width == 0 && origin.rem_euclid(width) == 0);
    let start = ceil_to(from, width);
    let end = floor_to(to, width).min(floor_to(rolled_to, width));
    if !fits || start >= end {
        cover(finer, from, to, bucket, out);
        return;
    }
    cover(finer, from, start, bucket, out);
    out.push((Some(level), start, end));
    cover(finer, end, to, bucket, out);
}

fn floor_to(ms: i64, width: i64) -> i64 {
    ms.saturating_sub(ms.rem_euclid(width))
}

fn ceil_to(ms: i64, width: i64) -> i64 {
    match ms.rem_euclid(width) {
        0 => ms,
        rem => ms.saturating_add(width - rem),
    }
}

/// One run of the rollup: as of `now`, for at most `budget`, in steps of at most `step_states`
/// source states.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RollupRun {
    pub(crate) now: i64,
    pub(crate) budget: Duration,
    pub(crate) step_states: i64,
}

/// How far `level` may be rolled now: for a level fed by the minutes, whole hours up to its lag
/// before `now` (so it moves, and batches read its progress again, at most once an hour); for
/// one fed by another level, that level's complete buckets. `None`: its source has not started.
fn limit_of(level: Level, grouped: bool, rolled: &Rolled, now: i64) -> Option<i64> {
    match level.source(grouped) {
        None => Some(floor_to(now.saturating_sub(level.lag()), HOUR)),
        Some(source) => rolled.get(source).map(|to| floor_to(to, source.width())),
    }
}

/// What one rollup step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Rolled this many source states (none: a span with nothing in it).
    Rolled(usize),
    /// Nothing to roll now.
    CaughtUp,
}

impl Store {
    /// Rolls every view's levels forward (views whose history is done), a step at a time, until
    /// each is caught up with `now` or `budget` has passed; the source states rolled. Each run
    /// starts at another view, so a long backlog at one does not hold the others back for ever.
    pub async fn roll_up_views(&self, now: i64, budget: Duration) -> Result<u64, StoreError> {
        self.roll_up(None, RollupRun { now, budget, step_states: ROLLUP_STEP_STATES }).await
    }

    /// [`Store::roll_up_views`] for one pipeline's views.
    pub async fn roll_up_pipeline(&self, pipeline: &str, now: i64, budget: Duration) -> Result<u64, StoreError> {
        self.roll_up(Some(pipeline), RollupRun { now, budget, step_states: ROLLUP_STEP_STATES }).await
    }

    pub(crate) async fn roll_up(&self, pipeline: Option<&str>, run: RollupRun) -> Result<u64, StoreError> {
        const VIEWS: &str = "SELECT pipeline_id, state_key, spec FROM views WHERE backfilled_at IS NOT NULL \
            AND ($1 IS NULL OR pipeline_id = $1) ORDER BY pipeline_id, view_id";
        const VIEWS_PG: &str = "SELECT pipeline_id, state_key, spec FROM views WHERE backfilled_at IS NOT NULL \
            AND ($1::text IS NULL OR pipeline_id = $1) ORDER BY pipeline_id, view_id";
        let started = Instant::now();
        let mut views: Vec<(String, String, String)> = match self {
            Store::Sqlite(s) => sqlx::query_as(VIEWS).bind(pipeline).fetch_all(&s.readers).await?,
            Store::Postgres(s) => sqlx::query_as(VIEWS_PG).bind(pipeline).fetch_all(&s.pool).await?,
        };
        if !views.is_empty() {
            let first = (run.now.div_euclid(MINUTE)).rem_euclid(views.len() as i64) as usize;
            views.rotate_left(first);
        }
        let mut rolled = 0u64;
        'views: for (pipeline, key, spec) in views {
            let Ok(spec) = spec_from(&spec) else { continue };
            let grouped = spec.group_by.is_some();
            for level in Level::ALL.into_iter().filter(|level| level.kept_for(grouped)) {
                // Looked at with no lock first: most runs find most levels caught up.
                if self.caught_up(&pipeline, &key, level, grouped, run.now).await? {
                    continue;
                }
                loop {
                    if started.elapsed() > run.budget {
                        break 'views;
                    }
                    match self.rollup_step(&pipeline, &key, level, run).await? {
                        Step::Rolled(states) => rolled += states as u64,
                        Step::CaughtUp => break,
                    }
                }
            }
        }
        metrics::counter!("dash_view_rollup_states_total").increment(rolled);
        Ok(rolled)
    }

    /// Whether a started level has nothing to roll now (read with no lock; its step looks again).
    async fn caught_up(
        &self,
        pipeline: &str,
        key: &str,
        level: Level,
        grouped: bool,
        now: i64,
    ) -> Result<bool, StoreError> {
        let rolled = self.rolled(pipeline, key).await?;
        Ok(match (rolled.get(level), limit_of(level, grouped, &rolled, now)) {
            (Some(to), Some(limit)) => to >= limit,
            (_, None) => true,
            (None, Some(_)) => false,
        })
    }

    /// How far each level of the view whose states are under `key` is rolled (read with no lock).
    async fn rolled(&self, pipeline: &str, key: &str) -> Result<Rolled, StoreError> {
        let rows: Vec<(String, i64)> =
            on_backend!(self, readers, |pool| sqlx::query_as(ROLLED).bind(pipeline).bind(key).fetch_all(pool).await?);
        Ok(Rolled::from_rows(rows))
    }

    async fn rollup_step(&self, pipeline: &str, key: &str, level: Level, run: RollupRun) -> Result<Step, StoreError> {
        let started = Instant::now();
        let step = match self {
            Store::Sqlite(s) => {
                let mut tx = s.writer.begin_with("BEGIN IMMEDIATE").await?;
                let step = step_locked(&mut *tx, pipeline, key, level, run).await?;
                tx.commit().await?;
                step
            }
            Store::Postgres(s) => {
                let mut tx = s.pool.begin().await?;
                let step = step_locked(&mut *tx, pipeline, key, level, run).await?;
                tx.commit().await?;
                step
            }
        };
        if step != Step::CaughtUp {
            metrics::histogram!("dash_view_rollup_lock_seconds").record(started.elapsed().as_secs_f64());
        }
        Ok(step)
    }

    /// A view's states over `[from, to)`, each part from the coarsest level that answers it (see
    /// the module's doc): (bucket start, group, state). `bucket`: the width of the buckets the
    /// caller merges them into, counted from `from` (`None`: one bucket for the whole range).
    /// Refused ([`StoreError::ReadTooLarge`]) past `limit` states or
    /// [`crate::MAX_VIEW_READ_BYTES`] of them.
    #[allow(clippy::too_many_arguments)]
    pub async fn view_states(
        &self,
        pipeline: &str,
        view: &str,
        from: i64,
        to: i64,
        bucket_ms: Option<i64>,
        groups: GroupsRead<'_>,
        limit: usize,
    ) -> Result<Vec<(i64, String, Cell)>, StoreError> {
        const KEY: &str = "SELECT state_key, spec FROM views WHERE pipeline_id = $1 AND view_id = $2";
        let row: Option<(String, String)> = on_backend!(self, readers, |pool| sqlx::query_as(KEY)
            .bind(pipeline)
            .bind(view)
            .fetch_optional(pool)
            .await?);
        let Some((key, spec)) = row else { return Ok(Vec::new()) };
        let grouped = spec_from(&spec)?.group_by.is_some();
        let rolled = self.rolled(pipeline, &key).await?;
        let order: &[Level] = match groups {
            _ if !grouped => &[Level::DayAll, Level::HourAll],
            GroupsRead::Merged => &[Level::DayAll, Level::HourAll, Level::MinuteAll],
            GroupsRead::Each | GroupsRead::One(_) => &[Level::Day, Level::Hour],
        };
        let levels: Vec<(Level, i64)> =
            order.iter().filter_map(|level| rolled.get(*level).map(|to| (*level, to))).collect();
        let group = match groups {
            GroupsRead::One(group) => Some(group),
            GroupsRead::Merged | GroupsRead::Each => None,
        };
        let mut read = crate::views::StatesRead::new(pipeline, view, limit);
        for (level, from, to) in plan(&levels, from, to, bucket_ms.map(|size| (size, from))) {
            let key = level.map_or_else(|| key.clone(), |level| level.key(&key));
            self.read_states(&key, from, to, group, &mut read).await?;
        }
        Ok(read.into_states())
    }
}

/// Rolls the next span of `level`'s source into it, with the pipeline's lock taken first.
async fn step_locked<T: StatesTx>(
    tx: &mut T,
    pipeline: &str,
    key: &str,
    level: Level,
    run: RollupRun,
) -> Result<Step, StoreError> {
    tx.lock_pipeline(pipeline).await?;
    // Still the view's key, and its history done.
    let Some(spec) = tx.rolling_view(pipeline, key).await? else { return Ok(Step::CaughtUp) };
    let spec = spec_from(&spec)?;
    let grouped = spec.group_by.is_some();
    if !level.kept_for(grouped) {
        return Ok(Step::CaughtUp);
    }
    let rolled = tx.rolled(pipeline, key).await?;
    let Some(limit) = limit_of(level, grouped, &rolled, run.now) else { return Ok(Step::CaughtUp) };
    let source_key = level.source(grouped).map_or_else(|| key.to_owned(), |source| source.key(key));
    let from = match rolled.get(level) {
        Some(to) => to,
        // Not started: from the bucket of the source's first state.
        None => match tx.first_state(pipeline, &source_key).await? {
            Some(first) => floor_to(first, level.width()),
            None => return Ok(Step::CaughtUp),
        },
    };
    if from >= limit {
        return Ok(Step::CaughtUp);
    }
    let step_states = run.step_states.max(1);
    let mut rows = tx.states_between(pipeline, &source_key, from, limit, step_states).await?;
    let mut to = limit;
    if rows.len() as i64 >= step_states {
        // A full step ends before the last time it read (its states may go on past the bound);
        // a step of one time only takes that time whole, up to the end of its source's bucket.
        let last = rows.last().map_or(from, |(t, _, _)| *t);
        rows.retain(|(t, _, _)| *t < last);
        if rows.is_empty() {
            rows = tx.states_between(pipeline, &source_key, last, last + 1, i64::MAX).await?;
            to = last + level.source(grouped).map_or(MINUTE, Level::width);
        } else {
            to = last;
        }
    }
    let read = rows.len();
    let width = level.width();
    let mut buckets: HashMap<(i64, String), Cell> = HashMap::new();
    for (t, group, state) in rows {
        match Cell::decode(&state) {
            Ok(cell) => {
                let group = if level.merges_groups() { GROUP_ALL.to_owned() } else { group };
                buckets.entry((floor_to(t, width), group)).or_insert_with(|| Cell::empty(spec.aggregate)).merge(&cell);
            }
            // A newer release's state: the level waits here for that release to roll it (rolling
            // past it would leave it out of the level for good).
            Err(err @ UnreadableState::Newer(_)) => {
                newer_state_skipped(pipeline, key, &err);
                return Ok(Step::CaughtUp);
            }
            Err(err) => {
                tracing::error!(pipeline, key, error = %err, "a view's stored state is unreadable; the view is computed again");
                tx.request_restart(pipeline, key).await?;
                return Ok(Step::CaughtUp);
            }
        }
    }
    // A bucket a step before began (or a late batch wrote) is merged into.
    let level_key = level.key(key);
    let keys: Vec<(&str, i64, &str)> = buckets.keys().map(|(t, g)| (level_key.as_str(), *t, g.as_str())).collect();
    let stored = tx.stored_states(pipeline, &keys).await?;
    drop(keys);
    let StoredStates { mut cells, newer, broken } = decode_stored(pipeline, stored);
    if !broken.is_empty() {
        tx.request_restart(pipeline, key).await?;
        return Ok(Step::CaughtUp);
    }
    if !newer.is_empty() {
        // The level's bucket is a newer release's: it waits for that release, as above.
        return Ok(Step::CaughtUp);
    }
    let mut states = StateRows::default();
    for ((t, group), cell) in buckets {
        let stored_key = (level_key.clone(), t, group);
        let state = merged_over(&mut cells, &stored_key, &cell);
        let (_, _, group) = stored_key;
        states.push(&level_key, t, group, state);
    }
    tx.write_states(pipeline, states, Vec::new()).await?;
    tx.set_rolled(pipeline, key, level.name(), to).await?;
    Ok(Step::Rolled(read))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_takes_each_part_from_the_coarsest_level_that_answers_it() {
        let levels = [(Level::DayAll, 3 * DAY + 5 * HOUR), (Level::HourAll, 3 * DAY + 7 * HOUR + 30 * MINUTE)];
        // One bucket for the range: days where whole, hours at the edges, minutes past them.
        let got = plan(&levels, DAY - 90 * MINUTE, 3 * DAY + 9 * HOUR, None);
        assert_eq!(
            got,
            [
                (None, DAY - 90 * MINUTE, DAY - HOUR),
                (Some(Level::HourAll), DAY - HOUR, DAY),
                (Some(Level::DayAll), DAY, 3 * DAY),
                (Some(Level::HourAll), 3 * DAY, 3 * DAY + 7 * HOUR),
                (None, 3 * DAY + 7 * HOUR, 3 * DAY + 9 * HOUR),
            ]
        );
        // Buckets of 10 minutes: no hour falls whole in one; buckets of a day from midnight: days.
        let got = plan(&levels, 0, 2 * DAY, Some((10 * MINUTE, 0)));
        assert_eq!(got, [(None, 0, 2 * DAY)]);
        let got = plan(&levels, 0, 2 * DAY, Some((DAY, 0)));
        assert_eq!(got, [(Some(Level::DayAll), 0, 2 * DAY)]);
        // Daily buckets from 06:00: hours, not days.
        let got = plan(&levels, 6 * HOUR, 2 * DAY + 6 * HOUR, Some((DAY, 6 * HOUR)));
        assert_eq!(got, [(Some(Level::HourAll), 6 * HOUR, 2 * DAY + 6 * HOUR)]);
        // Nothing rolled: the minutes.
        assert_eq!(plan(&[], 5, 10, None), [(None, 5, 10)]);
        // The far edges of time do not overflow.
        let got = plan(&levels, i64::MIN, i64::MAX, None);
        assert_eq!(got.first().map(|s| (s.0, s.1)), Some((None, i64::MIN)));
        assert_eq!(got.last().map(|s| (s.0, s.2)), Some((None, i64::MAX)));
    }

    #[test]
    fn level_keys_name_their_view() {
        for level in Level::ALL {
            assert_eq!(base_key(&level.key("orders.0190")), "orders.0190");
            assert_eq!(Level::parse(level.name()), Some(level));
            for grouped in [true, false].into_iter().filter(|grouped| level.kept_for(*grouped)) {
                let source = level.source(grouped);
                assert!(source.is_none_or(|s| s.kept_for(grouped)), "{level:?}'s source is kept");
                let width = source.map_or(MINUTE, Level::width);
                assert_eq!(level.width() % width, 0, "{level:?} holds whole buckets of its source");
            }
        }
        assert_eq!(base_key("orders"), "orders");
    }
}
