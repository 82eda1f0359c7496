//! Where events and pipelines are kept.
//!
//! [`Store`] is an enum over the backends (enum dispatch, not a trait object): SQLite for the
//! embedded default; PostgreSQL joins it behind the same methods. Every batch is one
//! transaction: events (deduplicated), the per-minute rollup, and each touched pipeline's
//! `seq` and totals, so a committed batch and its sequence number never disagree.
//!
//! **Architecture invariant:** the store knows nothing of HTTP, the bus or the intake log.

/// Runs one statement with the same binds on whichever backend the store is (on SQLite, on the
/// named pool: `writer` or `readers`).
macro_rules! on_backend {
    ($store:expr, $sqlite_pool:ident, |$pool:ident| $body:expr) => {
        match $store {
            Store::Sqlite(s) => {
                let $pool = &s.$sqlite_pool;
                $body
            }
            Store::Postgres(s) => {
                let $pool = &s.pool;
                $body
            }
        }
    };
}

mod binary_copy;
mod boards;
mod export;
mod postgres;
mod refusals;
mod retention;
mod set_aside;
mod sources;
mod sqlite;
pub mod testing;
mod timescale;
mod verify;
mod view_history;
mod view_rollups;
mod views;

use std::time::Duration;

use dash_domain::{Event, InvalidId, PipelineId, PipelineStats, PipelineUpdate};
use dash_signature::{BearerToken, SigningSecret};
use serde::Serialize;

pub use binary_copy::BinaryCopy;
pub use boards::{BoardRecord, MAX_SHARES_PER_BOARD, ShareRecord};
pub use export::ndjson;
pub use postgres::{Layout, PgStore, PoolSizes, StagedPg};
pub use refusals::{REFUSALS_KEPT, RefusalCount, Refusals};
pub use sources::{PollOutcome, SourceRecord};
pub use sqlite::SqliteStore;
pub use verify::ProviderAuth;
pub use view_history::BACKFILL_STEP_EVENTS;
pub use view_rollups::{GroupsRead, ROLLUP_STEP_STATES};
pub use views::{
    BackfillProgress, MAX_VIEW_READ_BYTES, PendingBackfill, PutMode, ViewRecord, ViewWrite, merge_by_minute,
};

/// Most buckets [`Store::series`] computes, whoever asks (the API allows fewer).
pub const MAX_SERIES_POINTS: i64 = 100_000;

/// How long a rotated-out secret and token keep working.
pub const ROTATION_GRACE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a pipeline with id {0:?} already exists")]
    Conflict(String),
    #[error("{0}")]
    InvalidName(#[from] InvalidId),
    #[error("no pipeline {0:?}")]
    NotFound(String),
    #[error("unsupported database url (expected sqlite://… or postgres://…)")]
    UnsupportedUrl,
    #[error("cannot prepare the database location: {0}")]
    Location(#[from] std::io::Error),
    #[error("invalid range: {0}")]
    InvalidRange(String),
    #[error("invalid view: {0}")]
    InvalidView(String),
    #[error("the read would take in too many view states; narrow the range or pick a group")]
    ReadTooLarge,
    #[error("invalid board: {0}")]
    InvalidBoard(String),
    #[error("{0}")]
    BoardReference(dash_boards::InvalidBoard),
    #[error("a stored board is unreadable: {0}")]
    UnreadableBoard(String),
    #[error("a stored view is unreadable: {0}")]
    UnreadableView(String),
    #[error("stored secret is unreadable")]
    BadSecret(#[from] dash_signature::SignatureError),
    /// A batch's statements were not answered within their deadline: the database or the
    /// network to it is away (a partition swallows packets without a reset). Its connection
    /// is closed, never reused.
    #[error("the database did not answer within {0:?}")]
    NoAnswer(std::time::Duration),
}

impl StoreError {
    /// Whether the database could not be reached or is not accepting work yet (refused, reset or
    /// timed-out connections, a server starting or shutting down, too many connections): worth
    /// retrying later, unlike a refusal of what was asked.
    pub fn is_unavailable(&self) -> bool {
        let sqlx_error = match self {
            Self::Database(err) => err,
            Self::Migrate(sqlx::migrate::MigrateError::Execute(err))
            | Self::Migrate(sqlx::migrate::MigrateError::ExecuteMigration(err, _)) => err,
            Self::Migrate(_) => return false,
            Self::NoAnswer(_) => return true,
            _ => return false,
        };
        match sqlx_error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // 08: connection exceptions; 57P01–57P03: shutting down or starting up;
                // 53300: too many connections.
                code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
            }),
            _ => false,
        }
    }
}

/// A pipeline as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineRecord {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub stats: PipelineStats,
    /// How long its events are kept; `None`: the node default.
    #[serde(serialize_with = "retention_text")]
    pub retention: Option<Duration>,
    /// Events the store refused for their data, kept aside (see [`Store::set_aside`]).
    pub set_aside: i64,
    /// The provider and its options as JSON (no secret); `None`: Standard Webhooks.
    #[serde(skip)]
    pub verify: Option<String>,
}

/// A retention as people write it (`"7days"`), or null.
fn retention_text<S: serde::Serializer>(retention: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    match retention {
        Some(d) => serializer.serialize_str(&dash_domain::format_retention(*d)),
        None => serializer.serialize_none(),
    }
}

/// A pipeline just created or rotated: the only time its secret and token are shown.
#[derive(Debug)]
pub struct IssuedCredentials {
    pub record: PipelineRecord,
    pub secret: SigningSecret,
    pub token: BearerToken,
}

/// What intake needs to authenticate a pipeline's requests.
#[derive(Debug, Clone)]
pub struct PipelineAuth {
    pub id: PipelineId,
    pub name: String,
    /// Current secret first, then a rotated-out one still in its grace period.
    pub secrets: Vec<SigningSecret>,
    pub token_hashes: Vec<String>,
    /// Until when the rotated-out secret and token (the second of each) are accepted.
    pub previous_expires_ms: Option<i64>,
    /// How a provider's deliveries are checked, when the pipeline takes them instead of
    /// Standard Webhooks signatures (its token still works).
    pub provider: Option<ProviderAuth>,
}

/// One event bound for a pipeline, as a buffer actor hands it to the store.
#[derive(Debug, Clone)]
pub struct BatchEvent {
    /// Shared by every event of the same request.
    pub pipeline: std::sync::Arc<str>,
    pub event: Event,
}

/// A stored event, as the read API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    pub id: String,
    /// Its type: its own (a provider's header...), else its payload's top-level `type` string.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub time: String,
    pub received_at: String,
    pub payload: Box<serde_json::value::RawValue>,
}

impl StoredEvent {
    /// A stored row: its payload's text and its type of its own, if any.
    pub(crate) fn new(
        id: String,
        time: String,
        received_at: String,
        payload: String,
        event_type: Option<String>,
    ) -> Self {
        let event_type = event_type.or_else(|| payload_type(&payload));
        Self { id, event_type, time, received_at, payload: payload_as_stored(payload) }
    }
}

/// The payload's top-level `type`, when it is a string (bounded as an event type is).
fn payload_type(payload: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Typed<'a> {
        #[serde(borrow, rename = "type")]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    let typed: Typed<'_> = serde_json::from_str(payload).ok()?;
    typed.kind.as_deref().and_then(dash_domain::event_type_of)
}

/// A stored payload as JSON the read API can send: the stored text verbatim, or, should it not
/// parse (stored by an older release that checked less), that text as a JSON string. Never an
/// error: one odd event must not make every read of its pipeline fail.
pub(crate) fn payload_as_stored(text: String) -> Box<serde_json::value::RawValue> {
    use serde_json::value::RawValue;
    match serde_json::from_str::<Box<RawValue>>(&text) {
        Ok(raw) => raw,
        Err(_) => {
            tracing::warn!(bytes = text.len(), "a stored payload is not readable JSON; shown as a string");
            serde_json::value::to_raw_value(&text).unwrap_or_else(|_| RawValue::NULL.to_owned())
        }
    }
}

/// One bucket of a time series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SeriesPoint {
    /// Bucket start, unix ms.
    pub t: i64,
    pub count: i64,
}

/// The result of one batch: the updates to publish, and how many events were new.
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    pub updates: Vec<PipelineUpdate>,
    pub inserted: u64,
    pub duplicates: u64,
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    pub partitions_created: u64,
    pub partitions_dropped: u64,
    pub events_deleted: u64,
    pub dedupe_pruned: u64,
    /// View states older than their view keeps.
    pub view_states_pruned: u64,
    /// View states of views deleted or started over.
    pub view_states_retired: u64,
}

#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Store {
    /// Connects by URL scheme, with PostgreSQL pools of the default sizes. Does not migrate.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_sized(url, PoolSizes::default()).await
    }

    /// Connects with PostgreSQL pools of `sizes` (see [`PoolSizes::for_work`]; SQLite keeps one
    /// writer). Does not migrate.
    pub async fn connect_sized(url: &str, sizes: PoolSizes) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            return Ok(Self::Sqlite(SqliteStore::connect(url).await?));
        }
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            return Ok(Self::Postgres(PgStore::connect(url, sizes)?));
        }
        Err(StoreError::UnsupportedUrl)
    }

    /// The PostgreSQL pools' sizes; `None` on SQLite.
    pub fn pool_sizes(&self) -> Option<PoolSizes> {
        match self {
            Self::Sqlite(_) => None,
            Self::Postgres(pg) => Some(pg.pool_sizes()),
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// How events are laid out: `sqlite`, or `timescale` / `partitioned` on PostgreSQL.
    pub fn layout(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(s) => s.layout().unwrap_or(Layout::Partitioned).as_str(),
        }
    }

    /// Retention and housekeeping: drops each pipeline's events older than its own retention
    /// (`retention` for pipelines without one) and view minutes older than each view keeps,
    /// prunes dedupe keys older than `dedupe_window` and refusal counts older than
    /// [`REFUSALS_KEPT`], and (native partitioning) makes day partitions ahead.
    pub async fn maintain(
        &self,
        retention: Duration,
        dedupe_window: Duration,
    ) -> Result<MaintenanceReport, StoreError> {
        let mut report = match self {
            Self::Sqlite(s) => s.maintain(retention).await,
            Self::Postgres(s) => s.maintain(retention, dedupe_window).await,
        }?;
        self.prune_refusals(dash_domain::now_ms()).await?;
        report.view_states_retired = self.purge_retired_states().await?;
        Ok(report)
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.migrate().await,
            Self::Postgres(s) => s.migrate().await,
        }
    }

    /// A round trip to the database, with a deadline.
    pub async fn ping(&self, deadline: Duration) -> Result<Duration, StoreError> {
        let started = std::time::Instant::now();
        let probe = async {
            match self {
                Self::Sqlite(s) => s.ping().await,
                Self::Postgres(s) => s.ping().await,
            }
        };
        match tokio::time::timeout(deadline, probe).await {
            Ok(result) => result.map(|()| started.elapsed()),
            Err(_) => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
        }
    }

    pub async fn create_pipeline(&self, name: &str) -> Result<IssuedCredentials, StoreError> {
        dash_domain::check_pipeline_name(name)?;
        let id = PipelineId::from_name(name)?;
        let name = name.trim();
        match self {
            Self::Sqlite(s) => s.create_pipeline(&id, name).await,
            Self::Postgres(s) => s.create_pipeline(&id, name).await,
        }
    }

    /// New secret and token; the old ones keep working for [`ROTATION_GRACE`].
    pub async fn rotate_credentials(&self, id_or_name: &str) -> Result<IssuedCredentials, StoreError> {
        if !dash_domain::is_lookup_key(id_or_name) {
            return Err(StoreError::NotFound(id_or_name.to_owned()));
        }
        match self {
            Self::Sqlite(s) => s.rotate_credentials(id_or_name).await,
            Self::Postgres(s) => s.rotate_credentials(id_or_name).await,
        }
    }

    pub async fn list_pipelines(&self) -> Result<Vec<PipelineRecord>, StoreError> {
        match self {
            Self::Sqlite(s) => s.list_pipelines().await,
            Self::Postgres(s) => s.list_pipelines().await,
        }
    }

    /// By id, else by name.
    /// Text that cannot name a pipeline (control characters, too long) finds nothing, on every
    /// backend alike, without a query.
    pub async fn find_pipeline(&self, id_or_name: &str) -> Result<Option<PipelineRecord>, StoreError> {
        if !dash_domain::is_lookup_key(id_or_name) {
            return Ok(None);
        }
        match self {
            Self::Sqlite(s) => s.find_pipeline(id_or_name).await,
            Self::Postgres(s) => s.find_pipeline(id_or_name).await,
        }
    }

    pub async fn pipeline_auths(&self) -> Result<Vec<PipelineAuth>, StoreError> {
        let mut auths = match self {
            Self::Sqlite(s) => s.pipeline_auths().await,
            Self::Postgres(s) => s.pipeline_auths().await,
        }?;
        let mut providers = self.provider_auths().await?;
        for auth in &mut auths {
            auth.provider = providers.remove(auth.id.as_str());
        }
        Ok(auths)
    }

    /// Stores a batch in one transaction; see the crate docs.
    pub async fn write_batch(&self, events: &[BatchEvent]) -> Result<BatchOutcome, StoreError> {
        match self {
            Self::Sqlite(s) => s.write_batch(events).await,
            Self::Postgres(s) => s.write_batch(events).await,
        }
    }

    /// How many batches a buffer actor may have written and not yet committed at once: several
    /// on PostgreSQL (each on its own connection, see [`StagedPg`]), one on SQLite (one writer).
    pub fn batches_in_flight(&self) -> usize {
        match self {
            Self::Sqlite(_) => 1,
            Self::Postgres(_) => postgres::BATCHES_IN_FLIGHT,
        }
    }

    /// The first half of [`Store::write_batch`]: on PostgreSQL the events are written in a
    /// transaction left open, and [`StagedBatch::commit`] assigns `seq` and commits, so a buffer
    /// actor can stage its next batch while the previous one commits. SQLite (one writer) writes
    /// and commits here; its `commit` only hands back the outcome.
    pub async fn stage_batch(&self, events: &[BatchEvent]) -> Result<StagedBatch, StoreError> {
        Ok(match self {
            Self::Sqlite(s) => StagedBatch::Committed(s.write_batch(events).await?),
            Self::Postgres(s) => StagedBatch::Postgres(s.stage_batch(events).await?),
        })
    }

    /// Event counts per bucket in `[from_ms, to_ms)`; `bucket_ms` is a whole number of minutes.
    /// Every bucket is present, empty ones as 0, so charts need no gap logic.
    pub async fn series(
        &self,
        pipeline: &str,
        from_ms: i64,
        to_ms: i64,
        bucket_ms: i64,
    ) -> Result<Vec<SeriesPoint>, StoreError> {
        let points = to_ms.checked_sub(from_ms).filter(|span| *span > 0 && bucket_ms > 0).map(|span| span / bucket_ms);
        if points.is_none_or(|n| n > MAX_SERIES_POINTS) {
            return Err(StoreError::InvalidRange(format!(
                "a series is 1 to {MAX_SERIES_POINTS} buckets of a positive width (from {from_ms}, to {to_ms}, bucket {bucket_ms} ms)"
            )));
        }
        let stored = match self {
            Self::Sqlite(s) => s.series(pipeline, from_ms, to_ms, bucket_ms).await?,
            Self::Postgres(s) => s.series(pipeline, from_ms, to_ms, bucket_ms).await?,
        };
        let mut stored = stored.into_iter().peekable();
        let mut dense = Vec::with_capacity(((to_ms - from_ms) / bucket_ms.max(1)).max(0) as usize + 1);
        let mut t = from_ms;
        while t < to_ms {
            let count = match stored.peek() {
                Some(p) if p.t == t => stored.next().map_or(0, |p| p.count),
                _ => 0,
            };
            dense.push(SeriesPoint { t, count });
            t = t.saturating_add(bucket_ms);
        }
        Ok(dense)
    }

    /// Newest events first (by event time).
    pub async fn recent_events(&self, pipeline: &str, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        match self {
            Self::Sqlite(s) => s.recent_events(pipeline, limit).await,
            Self::Postgres(s) => s.recent_events(pipeline, limit).await,
        }
    }

    pub async fn close(&self) {
        match self {
            Self::Sqlite(s) => s.close().await,
            Self::Postgres(s) => s.close().await,
        }
    }
}

/// A pipeline's row as the batch's `UPDATE … RETURNING` left it.
struct UpdatedPipeline {
    seq: i64,
    count: i64,
    duplicates: i64,
    last_event_at_ms: Option<i64>,
    /// Rises with every change of the pipeline's views (see `views.rs`).
    views_version: i64,
    /// Changes with every change of its views' groups (see `views.rs`).
    groups_tag: i64,
}

impl BatchOutcome {
    /// Adds a later batch's outcome (written after this one, so its updates come after).
    pub fn absorb(&mut self, later: BatchOutcome) {
        self.updates.extend(later.updates);
        self.inserted += later.inserted;
        self.duplicates += later.duplicates;
    }

    /// Adds one pipeline's share of the batch; `updated` is `None` when the pipeline is gone.
    fn record(
        &mut self,
        pipeline: &str,
        tally: &PipelineTally,
        updated: Option<UpdatedPipeline>,
        at: &str,
        views: Vec<dash_domain::ViewTouch>,
    ) {
        self.inserted += tally.inserted as u64;
        self.duplicates += (tally.received - tally.inserted) as u64;
        let Some(row) = updated else {
            tracing::warn!(pipeline, "batch for a pipeline that no longer exists");
            return;
        };
        self.updates.push(PipelineUpdate {
            pipeline: pipeline.to_owned(),
            seq: row.seq,
            stats: PipelineStats {
                seq: row.seq,
                count: row.count,
                duplicates: row.duplicates,
                last_event_at: row.last_event_at_ms.map(dash_domain::format_ms),
            },
            at: at.to_owned(),
            views,
            received: tally.oldest_received_ms.zip(tally.newest_received_ms).map(|(oldest, newest)| [oldest, newest]),
        });
    }
}

/// A batch written but (on PostgreSQL) not yet committed; dropping it rolls it back.
pub enum StagedBatch {
    Committed(BatchOutcome),
    Postgres(postgres::StagedPg),
}

impl StagedBatch {
    /// Commits; `events` must be the batch as it was staged (its views are counted from it).
    pub async fn commit(self, events: &[BatchEvent]) -> Result<BatchOutcome, StoreError> {
        match self {
            Self::Committed(outcome) => Ok(outcome),
            Self::Postgres(staged) => staged.commit(events).await,
        }
    }
}

/// Per-pipeline sums over one batch, shared by the backends.
#[derive(Debug, Default)]
struct PipelineTally {
    received: i64,
    inserted: i64,
    newest_received_ms: Option<i64>,
    oldest_received_ms: Option<i64>,
}

/// The minute holding `ms` (saturating at the far past: an event that old is refused by the
/// store, never a panic here).
fn minute_of(ms: i64) -> i64 {
    ms.saturating_sub(ms.rem_euclid(60_000))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod view_tests;
