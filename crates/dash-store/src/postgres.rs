//! PostgreSQL: the production store. Events live in a TimescaleDB hypertable where the
//! extension can be used, else in a table partitioned by day (partitions made ahead by the app).
//! The dedupe key is a separate table written in the same transaction (a hypertable's unique
//! indexes must include the time column). A batch's keys and events go in by binary `COPY`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dash_domain::{PipelineId, PipelineStats, format_ms, now_ms};
use dash_signature::{BearerToken, SigningSecret};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row};

use crate::binary_copy::BinaryCopy;
use crate::retention::{Cutoffs, RETENTIONS, retention_from};
use crate::timescale;
use crate::{
    BatchEvent, BatchOutcome, IssuedCredentials, MaintenanceReport, PipelineAuth, PipelineRecord, PipelineTally,
    ROTATION_GRACE, SeriesPoint, StoreError, StoredEvent, UpdatedPipeline,
};

/// Batches a buffer actor keeps written but uncommitted at once (see [`StagedPg`]). Three keep
/// both cores of a small server busy while one batch commits; the pool has room for them.
pub(crate) const BATCHES_IN_FLIGHT: usize = 3;
/// Most rows sent in one `COPY` statement; a batch's keys and events go in as many as they need.
///
/// One `COPY` buffers up to 1000 rows, each in a slot of its own that pins the table's tuple
/// descriptor, and PostgreSQL's resource owner records every pin in an open-addressed hash where
/// identical entries share one probe chain: a statement's cost grows with the square of its
/// rows. At 1000 rows that was ~17 % of the backend's CPU (PostgreSQL 15), at 500 ~9 %; its CPU
/// per event fell by about a tenth, at the price of one more round trip per table and batch.
pub(crate) const COPY_ROWS: usize = 500;
/// Advisory lock key held while migrating or reshaping partitions ("dash" in ASCII).
const SCHEMA_LOCK: i64 = 0x6461_7368;
/// Day partitions kept ready ahead of today (and one behind, for late events).
const PARTITIONS_AHEAD_DAYS: i64 = 7;
const DAY_MS: i64 = 86_400_000;
/// The earliest instant `to_timestamp` is asked for (year 1, unix ms): a bound below it (an
/// `i64::MIN` meaning "from the start") is read as it, since nothing is older.
pub(crate) const TIMESTAMP_FLOOR_MS: i64 = -62_135_596_800_000;

/// How the events table is laid out; chosen once per database and recorded in `dash_meta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// TimescaleDB hypertable (one-day chunks made ahead); rollup maintained in the batch.
    Timescale,
    /// Native declarative range partitioning by day; rollup maintained in the batch transaction.
    Partitioned,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timescale => "timescale",
            Self::Partitioned => "partitioned",
        }
    }
}

#[derive(Clone)]
pub struct PgStore {
    /// Reads, readiness, maintenance, migrations.
    pub(crate) pool: PgPool,
    /// Batch writes only.
    writers: PgPool,
    /// The job queue's.
    jobs: PgPool,
    sizes: PoolSizes,
    layout: std::sync::Arc<std::sync::OnceLock<Layout>>,
    /// TimescaleDB: the days (UTC, unix ms) known to have a chunk, so a batch never makes one.
    chunk_days: Arc<parking_lot::Mutex<std::collections::HashSet<i64>>>,
    views: crate::views::ViewCache,
    /// [`BATCH_DEADLINE`], shorter in tests.
    batch_deadline: Duration,
}

/// A batch's dedupe keys by `COPY`: the usual case, where every key is new. A key already there
/// fails it (unique violation) and the batch is written again through [`DEDUPE_INSERT`].
const DEDUPE_COPY: &str = "COPY event_dedupe (key, seen_at) FROM STDIN (FORMAT binary)";

/// A batch's dedupe keys when some may be known: the new ones come back.
const DEDUPE_INSERT: &str = "
INSERT INTO event_dedupe (key, seen_at)
SELECT * FROM UNNEST($1::bytea[], $2::timestamptz[])
ON CONFLICT DO NOTHING
RETURNING key";

/// An event's dedupe key, in parts: its pipeline id, a zero byte (which no pipeline id holds),
/// its id. One `bytea` column, compared bytewise (migration 0005).
fn dedupe_key<'a>(pipeline: &'a str, event_id: &'a str) -> [&'a [u8]; 3] {
    [pipeline.as_bytes(), b"\0", event_id.as_bytes()]
}

/// The events whose keys were new.
const EVENTS_COPY: &str =
    "COPY events (pipeline_id, event_id, event_time, received_at, payload, event_type) FROM STDIN (FORMAT binary)";

/// A batch's transaction gives up waiting for a lock after a while (see [`StagedPg`]), and the
/// server ends it should it idle, between its staging and its commit, for longer than the
/// batches ahead of it can take to commit (a buffer actor has three in flight, each bounded by
/// its deadline): a node cut off mid-batch holds its keys no longer than that.
const BATCH_BEGIN: &str =
    "BEGIN; SET LOCAL lock_timeout = '10s'; SET LOCAL idle_in_transaction_session_timeout = '60s'";

/// How long a batch's staging, and then its commit, may wait for the database, at the least
/// ([`batch_deadline`] adds time for a large batch's bytes). Past it the batch fails as
/// [`StoreError::NoAnswer`] (retried) and its connection is closed. Without it, a statement in
/// flight when a network partition begins waits for TCP to resume or give up, which after a long
/// cut is minutes (retransmissions back off to two minutes apart), and the ingestor's batches
/// wait with it. Above the lock timeout, so a batch that waits on another's lock fails with the
/// server's own error first.
pub const BATCH_DEADLINE: Duration = Duration::from_secs(15);

/// The slowest the database may take in a batch's bytes before its deadline passes: 8 MiB/s, a
/// fraction of what a slow link carries, so only a batch nobody answers misses it.
const BATCH_BYTES_PER_SEC: u64 = 8 << 20;

/// The deadline of each step of a batch of `bytes` payload bytes: [`BATCH_DEADLINE`] (or the
/// store's shorter one in tests) plus the time its bytes may take.
fn batch_deadline(base: Duration, bytes: u64) -> Duration {
    base + Duration::from_millis(bytes.saturating_mul(1000) / BATCH_BYTES_PER_SEC)
}

/// A step of a batch, or [`StoreError::NoAnswer`] once `deadline` passes (the step is dropped,
/// and with it its connection, closed as [`BatchConn`] closes an unfinished one).
async fn within<T>(
    deadline: Duration,
    step: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(deadline, step).await.unwrap_or(Err(StoreError::NoAnswer(deadline)))
}

/// A committing batch's totals, in one round trip: each touched pipeline gets its next `seq`
/// and its counts ($1..$4, one element per pipeline), and the per-minute counts go into the
/// rollup ($5..$7), on both layouts.
///
/// The `pipelines` rows are locked in id order first (`ORDER BY … FOR UPDATE` locks rows as the
/// sort hands them out), so two nodes' commits touching the same pipelines never deadlock.
///
/// From here to its `COMMIT` the transaction idles only while the node counts its views, so the
/// server ends it after 5 s idle (`set_config` in the statement: no round trip of its own): a
/// node cut off between this statement and its `COMMIT` holds the pipelines' rows, which every
/// other node's commit waits for, no longer than that.
const BATCH_TOTALS: &str = "
WITH idle_bound AS MATERIALIZED (
    SELECT set_config('idle_in_transaction_session_timeout', '5s', true)
), totals AS (
    SELECT t.* FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::timestamptz[])
        AS t(id, inserted, duplicates, newest), idle_bound
), locked AS MATERIALIZED (
    SELECT id FROM pipelines WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
), rollup AS (
    INSERT INTO event_rollup_minute (pipeline_id, minute, event_count)
    SELECT * FROM UNNEST($5::text[], $6::timestamptz[], $7::int8[])
    ON CONFLICT (pipeline_id, minute) DO UPDATE
        SET event_count = event_rollup_minute.event_count + excluded.event_count
)
UPDATE pipelines p
SET seq = p.seq + 1,
    event_count = p.event_count + t.inserted,
    duplicate_count = p.duplicate_count + t.duplicates,
    last_event_at = GREATEST(p.last_event_at, t.newest)
FROM locked JOIN totals t ON t.id = locked.id
WHERE p.id = locked.id
RETURNING p.id, p.seq, p.event_count, p.duplicate_count, p.last_event_at, p.views_version, p.groups_tag";

/// The events table's columns, the same on both layouts. `json` keeps the payload as sent;
/// `event_type` is the type where it is not the payload's own (migration 0010).
/// `batch_xid`: the transaction that wrote the row, which a view's history reads against its cut
/// (migration 0012, view_history.rs).
pub(crate) const EVENTS_COLUMNS: &str = "pipeline_id TEXT NOT NULL, event_id TEXT NOT NULL, \
    event_time TIMESTAMPTZ NOT NULL, received_at TIMESTAMPTZ NOT NULL, payload JSON NOT NULL, event_type TEXT, \
    batch_xid xid8 DEFAULT pg_current_xact_id()";

const PIPELINE_COLUMNS: &str =
    "id, name, created_at, seq, event_count, duplicate_count, last_event_at, retention_ms, set_aside_count, verify";

fn ts_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn record_from(row: &PgRow) -> Result<PipelineRecord, sqlx::Error> {
    Ok(PipelineRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: format_ms(ts_ms(row.try_get("created_at")?)),
        stats: PipelineStats {
            count: row.try_get("event_count")?,
            seq: row.try_get("seq")?,
            duplicates: row.try_get("duplicate_count")?,
            last_event_at: row.try_get::<Option<DateTime<Utc>>, _>("last_event_at")?.map(|t| format_ms(ts_ms(t))),
        },
        retention: retention_from(row.try_get("retention_ms")?),
        set_aside: row.try_get("set_aside_count")?,
        verify: row.try_get("verify")?,
    })
}

/// How many connections each of the store's pools may open on PostgreSQL.
///
/// Batch writers, the job queue and everything else (page and API reads, readiness, maintenance,
/// migrations) each get a pool of their own, so that writers busy on every partition cannot
/// starve readiness or the job queue's heartbeats, and no pool is sized by guesswork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSizes {
    /// Batch writes: every partition's batches in flight, plus one for chunks made ahead.
    pub writers: u32,
    /// Reads, readiness, maintenance and migrations.
    pub service: u32,
    /// The job queue (apalis): its workers' fetches, heartbeats and acknowledgements.
    pub jobs: u32,
}

impl PoolSizes {
    /// Sized from the work this node does: `partitions` buffer actors, `job_concurrency` jobs.
    pub fn for_work(partitions: usize, job_concurrency: usize) -> Self {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Self {
            writers: count(partitions.max(1) * BATCHES_IN_FLIGHT + 1),
            service: 8,
            jobs: count(job_concurrency.max(1) + 3),
        }
    }

    /// Connections this node may open in all.
    pub fn total(&self) -> u32 {
        self.writers + self.service + self.jobs
    }
}

impl Default for PoolSizes {
    /// A node with the default four partitions and four concurrent jobs.
    fn default() -> Self {
        Self::for_work(4, 4)
    }
}

/// sqlx (0.9.1 on) sets `TCP_NODELAY` on its sockets: without it a batch's large `Bind` ends in
/// a short segment that Nagle's algorithm holds until the server's delayed ACK (~40 ms).
fn pool_options(max: u32) -> PgPoolOptions {
    PgPoolOptions::new().max_connections(max.max(1)).acquire_timeout(Duration::from_secs(5))
}

impl PgStore {
    /// Builds the pools without connecting: each connects when first used, so a node starts
    /// while the database is unreachable (see [`StoreError::is_unavailable`]).
    pub fn connect(url: &str, sizes: PoolSizes) -> Result<Self, StoreError> {
        let pool = pool_options(sizes.service).connect_lazy(url)?;
        let writers = pool_options(sizes.writers).connect_lazy(url)?;
        let jobs = pool_options(sizes.jobs).connect_lazy(url)?;
        Ok(Self {
            pool,
            writers,
            jobs,
            sizes,
            layout: Default::default(),
            chunk_days: Default::default(),
            views: Default::default(),
            batch_deadline: BATCH_DEADLINE,
        })
    }

    /// The same store with another deadline on each batch step (tests of a network that
    /// swallows packets use a short one).
    pub fn with_batch_deadline(mut self, deadline: Duration) -> Self {
        self.batch_deadline = deadline;
        self
    }

    /// The job queue's own pool, for the tables it keeps in the same database.
    pub fn jobs_pool(&self) -> &PgPool {
        &self.jobs
    }

    /// The service pool (reads, readiness, maintenance), for tests that look inside.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn pool_sizes(&self) -> PoolSizes {
        self.sizes
    }

    /// The layout in use (known after [`PgStore::migrate`]).
    pub fn layout(&self) -> Option<Layout> {
        self.layout.get().copied()
    }

    /// Migrations, then the events layout and today's partitions, all under one advisory lock
    /// so that nodes starting together migrate once.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1)").bind(SCHEMA_LOCK).execute(&mut *conn).await?;
        let result = async {
            let mut migrator = sqlx::migrate!("../../migrations/postgres");
            // A database a newer release migrated stays usable by this one (a rolling upgrade's
            // older nodes, a rollback): every migration only adds.
            migrator.set_ignore_missing(true);
            migrator.run(&mut *conn).await?;
            let layout = ensure_layout(&mut conn).await?;
            match layout {
                Layout::Partitioned => {
                    ensure_partitions(&mut conn, now_ms()).await?;
                }
                Layout::Timescale => {
                    if timescale::retire_continuous_aggregate(&mut conn).await? {
                        tracing::info!(
                            "timescaledb: the continuous aggregate is replaced by the rollup kept in each batch"
                        );
                    }
                }
            }
            Ok::<_, StoreError>(layout)
        }
        .await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)").bind(SCHEMA_LOCK).execute(&mut *conn).await;
        let layout = result?;
        unlocked?;
        let _ = self.layout.set(layout);
        if layout == Layout::Timescale {
            self.ensure_chunks_for(&days_around(now_ms())).await?;
        }
        tracing::info!(layout = layout.as_str(), "postgres events layout");
        Ok(())
    }

    /// TimescaleDB: makes sure each of `days` has its chunk before a batch writes into it.
    async fn ensure_chunks_for(&self, days: &[i64]) -> Result<(), StoreError> {
        let missing: Vec<i64> = {
            let known = self.chunk_days.lock();
            days.iter().copied().filter(|d| !known.contains(d)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut conn = self.writers.acquire().await?;
        // Inside a batch's deadline: cancelled there, a pooled connection would be pinged on its
        // way back to the pool, and a ping whose answer a partition swallows waits on TCP. A
        // new day's chunk is rare; the connection is closed after it, not pooled.
        conn.close_on_drop();
        let made = timescale::ensure_chunks(&mut conn, &missing).await?;
        if made > 0 {
            tracing::debug!(made, "timescaledb chunks made ahead of their batches");
        }
        let mut known = self.chunk_days.lock();
        // A bound on memory for senders that spread events over many years.
        if known.len() > 100_000 {
            known.clear();
        }
        known.extend(missing);
        Ok(())
    }

    fn layout_or_default(&self) -> Layout {
        self.layout().unwrap_or(Layout::Partitioned)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn create_pipeline(&self, id: &PipelineId, name: &str) -> Result<IssuedCredentials, StoreError> {
        let secret = SigningSecret::generate();
        let token = BearerToken::generate();
        let inserted = sqlx::query(
            "INSERT INTO pipelines (id, name, secret, token_hash) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(id.as_str())
        .bind(name)
        .bind(secret.expose())
        .bind(token.hash())
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(id.to_string()));
        }
        let record = self.find_pipeline(id.as_str()).await?.ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        Ok(IssuedCredentials { record, secret, token })
    }

    pub async fn rotate_credentials(&self, id_or_name: &str) -> Result<IssuedCredentials, StoreError> {
        let secret = SigningSecret::generate();
        let token = BearerToken::generate();
        let updated = sqlx::query(
            "UPDATE pipelines SET previous_secret = secret, previous_token_hash = token_hash, \
             previous_expires_at = now() + make_interval(secs => $1), secret = $2, token_hash = $3 \
             WHERE id = $4 OR name = $4",
        )
        .bind(ROTATION_GRACE.as_secs_f64())
        .bind(secret.expose())
        .bind(token.hash())
        .bind(id_or_name)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound(id_or_name.to_owned()));
        }
        let record =
            self.find_pipeline(id_or_name).await?.ok_or_else(|| StoreError::NotFound(id_or_name.to_owned()))?;
        Ok(IssuedCredentials { record, secret, token })
    }

    pub async fn list_pipelines(&self) -> Result<Vec<PipelineRecord>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!("SELECT {PIPELINE_COLUMNS} FROM pipelines ORDER BY id")))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(record_from).collect::<Result<_, _>>()?)
    }

    pub async fn find_pipeline(&self, id_or_name: &str) -> Result<Option<PipelineRecord>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {PIPELINE_COLUMNS} FROM pipelines WHERE id = $1 OR name = $1 ORDER BY id = $1 DESC LIMIT 1"
        )))
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(record_from).transpose()?)
    }

    pub async fn pipeline_auths(&self) -> Result<Vec<PipelineAuth>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, secret, token_hash, \
             CASE WHEN previous_expires_at > now() THEN previous_secret END AS previous_secret, \
             CASE WHEN previous_expires_at > now() THEN previous_token_hash END AS previous_token_hash, \
             CASE WHEN previous_expires_at > now() \
                  THEN (extract(epoch FROM previous_expires_at) * 1000)::int8 END AS previous_expires_ms \
             FROM pipelines",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut auths = Vec::with_capacity(rows.len());
        for row in rows {
            let mut secrets = vec![SigningSecret::parse(row.try_get("secret")?)?];
            let mut token_hashes = vec![row.try_get::<String, _>("token_hash")?];
            if let Some(previous) = row.try_get::<Option<String>, _>("previous_secret")? {
                secrets.push(SigningSecret::parse(&previous)?);
            }
            if let Some(previous) = row.try_get::<Option<String>, _>("previous_token_hash")? {
                token_hashes.push(previous);
            }
            auths.push(PipelineAuth {
                id: PipelineId::parse(row.try_get("id")?)?,
                name: row.try_get("name")?,
                secrets,
                token_hashes,
                provider: None,
                previous_expires_ms: row.try_get("previous_expires_ms")?,
            });
        }
        Ok(auths)
    }

    /// Writes a batch's events and dedupe keys in a transaction left open: see [`StagedPg`].
    /// Each key repeated within the batch is sent once; the repeats count as duplicates.
    ///
    /// Both go by binary `COPY` (statements of at most [`COPY_ROWS`] rows), the keys first. When a
    /// key is already stored its `COPY` fails; the batch then starts over in a new transaction,
    /// inserting its keys with `ON CONFLICT DO NOTHING` to learn which are new, and copies only
    /// those events.
    ///
    /// Bounded by [`batch_deadline`]: past it the batch's connection is closed, not reused.
    pub async fn stage_batch(&self, events: &[BatchEvent]) -> Result<StagedPg, StoreError> {
        let bytes: usize = events.iter().map(|e| e.event.payload.len()).sum();
        let deadline = batch_deadline(self.batch_deadline, bytes as u64);
        within(deadline, self.stage_unbounded(events, deadline)).await
    }

    async fn stage_unbounded(&self, events: &[BatchEvent], deadline: Duration) -> Result<StagedPg, StoreError> {
        let mut tally: BTreeMap<Arc<str>, PipelineTally> = BTreeMap::new();
        let mut seen =
            std::collections::HashSet::with_capacity_and_hasher(events.len(), foldhash::fast::RandomState::default());
        let mut unique = Vec::with_capacity(events.len());
        // Events of a request are adjacent and share their pipeline: counted a run at a time.
        for run in events.chunk_by(|a, b| a.pipeline == b.pipeline) {
            tally.entry(run[0].pipeline.clone()).or_default().received += run.len() as i64;
        }
        for e in events {
            if seen.insert((&*e.pipeline, e.event.id.as_str())) {
                unique.push(e);
            }
        }

        // Every COPY body is built before the transaction begins, so its connection never
        // waits on this task between statements.
        if self.layout_or_default() == Layout::Timescale {
            let mut days: Vec<i64> =
                unique.iter().map(|e| e.event.time_ms - e.event.time_ms.rem_euclid(DAY_MS)).collect();
            days.sort_unstable();
            days.dedup();
            // Best effort: should it fail (a lock wait behind maintenance), the batch makes the
            // chunk itself, as a plain insert would.
            if let Err(err) = self.ensure_chunks_for(&days).await {
                tracing::warn!(error = %err, "timescaledb: chunks not made ahead of a batch");
            }
        }
        let key_bodies: Vec<Vec<u8>> = unique.chunks(COPY_ROWS).map(key_rows).collect();
        let mut event_bodies: Vec<Vec<u8>> = unique.chunks(COPY_ROWS).map(event_rows).collect();
        let mut tx = BatchConn::begin(&self.writers).await?;
        let keys_copied = async {
            for body in key_bodies {
                copy_in(&mut tx, DEDUPE_COPY, body).await?;
            }
            Ok(())
        };
        let fresh = match keys_copied.await {
            Ok(()) => unique,
            Err(sqlx::Error::Database(err)) if err.is_unique_violation() => {
                // The COPY ended cleanly with its error: the same connection starts over.
                tx.restart().await?;
                keep_new_keys(&mut tx, &mut unique).await?;
                event_bodies = unique.chunks(COPY_ROWS).map(event_rows).collect();
                unique
            }
            Err(err) => return Err(err.into()),
        };
        for body in event_bodies {
            copy_in(&mut tx, EVENTS_COPY, body).await?;
        }

        // Where each new event sits in the batch, for the views at commit.
        let base = events.as_ptr() as usize;
        let size = std::mem::size_of::<BatchEvent>().max(1);
        let fresh_at: Vec<u32> =
            fresh.iter().map(|e| ((*e as *const BatchEvent as usize - base) / size) as u32).collect();
        let mut per_minute: BTreeMap<(&str, i64), i64> = BTreeMap::new();
        for run in fresh.chunk_by(|a, b| a.pipeline == b.pipeline) {
            let t = tally.get_mut(&*run[0].pipeline).expect("tallied above");
            t.inserted += run.len() as i64;
            t.newest_received_ms = t.newest_received_ms.max(run.iter().map(|e| e.event.received_ms).max());
            let oldest = run.iter().map(|e| e.event.received_ms).min();
            t.oldest_received_ms = match (t.oldest_received_ms, oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let same_minute = |a: &&BatchEvent, b: &&BatchEvent| {
                crate::minute_of(a.event.time_ms) == crate::minute_of(b.event.time_ms)
            };
            for minute in run.chunk_by(same_minute) {
                let key = (&*minute[0].pipeline, crate::minute_of(minute[0].event.time_ms));
                *per_minute.entry(key).or_default() += minute.len() as i64;
            }
        }

        // The rollup is kept in the batch on both layouts, so series are exact on both.
        let mut minutes = RollupMinutes::default();
        for ((pipeline, minute), count) in per_minute {
            minutes.pipelines.push(pipeline.to_owned());
            minutes.minutes.push(from_ms(minute));
            minutes.counts.push(count);
        }
        Ok(StagedPg { tx, tally, minutes, fresh: fresh_at, views: self.views.clone(), deadline })
    }

    pub async fn write_batch(&self, events: &[BatchEvent]) -> Result<BatchOutcome, StoreError> {
        self.stage_batch(events).await?.commit(events).await
    }

    pub async fn series(
        &self,
        pipeline: &str,
        from_ms: i64,
        to_ms: i64,
        bucket_ms: i64,
    ) -> Result<Vec<SeriesPoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT (floor((extract(epoch FROM minute) * 1000 - $2) / $4) * $4 + $2)::int8 AS bucket, \
             sum(event_count)::int8 FROM event_rollup_minute \
             WHERE pipeline_id = $1 AND minute >= to_timestamp($2 / 1000.0) AND minute < to_timestamp($3 / 1000.0) \
             GROUP BY bucket ORDER BY bucket",
        )
        .bind(pipeline)
        .bind(from_ms)
        .bind(to_ms)
        .bind(bucket_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(SeriesPoint { t: r.try_get(0)?, count: r.try_get(1)? })).collect()
    }

    pub async fn recent_events(&self, pipeline: &str, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_id, event_time, received_at, payload::text, event_type FROM events \
             WHERE pipeline_id = $1 ORDER BY event_time DESC, received_at DESC LIMIT $2",
        )
        .bind(pipeline)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let payload: String = r.try_get(3)?;
                Ok(StoredEvent::new(
                    r.try_get(0)?,
                    format_ms(ts_ms(r.try_get(1)?)),
                    format_ms(ts_ms(r.try_get(2)?)),
                    payload,
                    r.try_get(4)?,
                ))
            })
            .collect()
    }

    /// Partitions ahead, retention, dedupe pruning. Runs on one node at a time (advisory
    /// try-lock); another node's concurrent call returns at once with nothing done.
    ///
    /// Retention is per pipeline (`retention` for pipelines without their own): whole day
    /// partitions (or TimescaleDB chunks) go once no pipeline keeps anything in them; rows
    /// a pipeline no longer keeps in the days that stay are deleted, as are its rollup minutes.
    pub async fn maintain(
        &self,
        retention: Duration,
        dedupe_window: Duration,
    ) -> Result<MaintenanceReport, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(SCHEMA_LOCK).fetch_one(&mut *conn).await?;
        if !locked {
            return Ok(MaintenanceReport::default());
        }
        let result = async {
            let now = now_ms();
            let mut report = MaintenanceReport::default();
            let dedupe_cutoff = from_ms(now - dedupe_window.as_millis() as i64);
            report.dedupe_pruned = sqlx::query("DELETE FROM event_dedupe WHERE seen_at < $1")
                .bind(dedupe_cutoff)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            let pipelines: Vec<(String, Option<i64>)> = sqlx::query_as(RETENTIONS).fetch_all(&mut *conn).await?;
            let cutoffs = Cutoffs::new(pipelines, retention, now);
            let layout = self.layout_or_default();
            match layout {
                Layout::Partitioned => {
                    report.partitions_created = ensure_partitions(&mut conn, now).await?;
                    report.partitions_dropped = drop_partitions_before(&mut conn, cutoffs.everyone).await?;
                }
                Layout::Timescale => {
                    report.partitions_dropped =
                        timescale::drop_chunks_before(&mut conn, from_ms(cutoffs.everyone)).await?;
                    // Dropped days are no longer known to have a chunk; days ahead get theirs.
                    self.chunk_days.lock().retain(|day| *day + DAY_MS > cutoffs.everyone);
                    report.partitions_created = timescale::ensure_chunks(&mut conn, &days_around(now)).await?;
                }
            }
            for (pipeline, cutoff) in &cutoffs.per_pipeline {
                report.events_deleted += sqlx::query("DELETE FROM events WHERE pipeline_id = $1 AND event_time < $2")
                    .bind(pipeline)
                    .bind(from_ms(*cutoff))
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                sqlx::query("DELETE FROM event_rollup_minute WHERE pipeline_id = $1 AND minute < $2")
                    .bind(pipeline)
                    .bind(from_ms(*cutoff))
                    .execute(&mut *conn)
                    .await?;
            }
            let views = sqlx::query_as(crate::views::VIEWS_KEPT).fetch_all(&mut *conn).await?;
            for (pipeline, view, cutoff) in crate::views::view_cutoffs(views, &cutoffs.per_pipeline, now) {
                report.view_states_pruned += sqlx::query(crate::views::PRUNE_STATES)
                    .bind(pipeline)
                    .bind(view)
                    .bind(cutoff)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
            }
            Ok::<_, StoreError>(report)
        }
        .await;
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(SCHEMA_LOCK).execute(&mut *conn).await;
        result
    }

    pub async fn close(&self) {
        self.writers.close().await;
        self.jobs.close().await;
        self.pool.close().await;
    }
}

/// A batch written in an open transaction, not yet visible to anyone; dropping it rolls it back.
///
/// A buffer actor keeps several of these open at once, each on its own connection, and commits
/// them in log order. That is safe because the write touches only the batch's own dedupe keys
/// and events: a write waits on another open batch only for a key both hold, and the commit
/// (the `pipelines` rows, then the rollup) waits only on other commits, never on a batch still
/// being written. The actor keeps keys apart across its own open batches; a wait on another
/// node's batch ends with that batch's commit, or with `lock_timeout` (a failed write, retried).
pub struct StagedPg {
    tx: BatchConn,
    tally: BTreeMap<Arc<str>, PipelineTally>,
    minutes: RollupMinutes,
    /// Where the new events sit in the staged batch.
    fresh: Vec<u32>,
    views: crate::views::ViewCache,
    /// How long the commit may wait for the database ([`batch_deadline`]).
    deadline: Duration,
}

/// Per-pipeline, per-minute counts of a staged batch's new events, as `UNNEST` columns.
#[derive(Default)]
struct RollupMinutes {
    pipelines: Vec<String>,
    minutes: Vec<DateTime<Utc>>,
    counts: Vec<i64>,
}

impl StagedPg {
    /// Assigns each touched pipeline its next `seq` and adds to its totals, adds the rollup
    /// (one statement, [`BATCH_TOTALS`]), counts the new events into the pipelines' views, then
    /// commits. `events`: the batch as staged. Bounded by [`batch_deadline`]: past it the
    /// batch's connection is closed. Its outcome is then unknown to this node: the server may
    /// have committed before the answer was lost. Written again, such a batch finds its events
    /// stored; they count as duplicates (the pipeline's count and its views stay exact, as
    /// after a connection reset during a `COMMIT`), and the update it would have published is
    /// not (clients see the next one's `seq` skip and catch up from the store).
    pub async fn commit(self, events: &[BatchEvent]) -> Result<BatchOutcome, StoreError> {
        within(self.deadline, self.commit_unbounded(events)).await
    }

    async fn commit_unbounded(mut self, events: &[BatchEvent]) -> Result<BatchOutcome, StoreError> {
        let at = format_ms(now_ms());
        let mut ids = Vec::with_capacity(self.tally.len());
        let mut inserted = Vec::with_capacity(self.tally.len());
        let mut duplicates = Vec::with_capacity(self.tally.len());
        let mut newest = Vec::with_capacity(self.tally.len());
        for (pipeline, t) in &self.tally {
            ids.push(&**pipeline);
            inserted.push(t.inserted);
            duplicates.push(t.received - t.inserted);
            newest.push(t.newest_received_ms.map(from_ms));
        }
        let rows = sqlx::query(BATCH_TOTALS)
            .bind(&ids)
            .bind(&inserted)
            .bind(&duplicates)
            .bind(&newest)
            .bind(&self.minutes.pipelines)
            .bind(&self.minutes.minutes)
            .bind(&self.minutes.counts)
            .fetch_all(&mut *self.tx)
            .await?;
        let mut updated = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get(0)?;
            let totals = UpdatedPipeline {
                seq: row.try_get(1)?,
                count: row.try_get(2)?,
                duplicates: row.try_get(3)?,
                last_event_at_ms: row.try_get::<Option<DateTime<Utc>>, _>(4)?.map(ts_ms),
                views_version: row.try_get(5)?,
                groups_tag: row.try_get(6)?,
            };
            updated.insert(id, totals);
        }
        let versions: HashMap<String, (i64, i64)> = updated
            .iter()
            .filter(|(id, _)| self.tally.get(id.as_str()).is_some_and(|t| t.inserted > 0))
            .map(|(id, row)| (id.clone(), (row.views_version, row.groups_tag)))
            .collect();
        let mut touches =
            crate::views::count_batch_pg(&mut self.tx, &self.views, &versions, events, &self.fresh).await?;
        self.tx.commit().await?;
        let mut outcome = BatchOutcome::default();
        for (pipeline, t) in &self.tally {
            let views = touches.remove(&**pipeline).unwrap_or_default();
            outcome.record(pipeline, t, updated.remove(&**pipeline), &at, views);
        }
        Ok(outcome)
    }
}

/// A batch's connection, in its transaction. It goes back to the pool only after a `COMMIT`
/// that succeeded: after any error, or if the task writing the batch is cancelled (in the middle
/// of a `COPY`, say), it is closed instead, which also rolls the transaction back. A connection
/// left mid-protocol is never handed to the next batch.
struct BatchConn {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    clean: bool,
}

impl BatchConn {
    async fn begin(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let mut this = Self { conn: pool.acquire().await?, clean: false };
        sqlx::raw_sql(BATCH_BEGIN).execute(&mut *this.conn).await?;
        Ok(this)
    }

    /// Rolls back and begins again on the same connection (after an error the server reported
    /// in full, such as a duplicate key ending a `COPY`).
    async fn restart(&mut self) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("ROLLBACK").execute(&mut *self.conn).await?;
        sqlx::raw_sql(BATCH_BEGIN).execute(&mut *self.conn).await?;
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("COMMIT").execute(&mut *self.conn).await?;
        self.clean = true;
        Ok(())
    }
}

impl std::ops::Deref for BatchConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for BatchConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl Drop for BatchConn {
    fn drop(&mut self) {
        if !self.clean {
            self.conn.close_on_drop();
        }
    }
}

/// One `COPY` body of dedupe keys.
fn key_rows(events: &[&BatchEvent]) -> Vec<u8> {
    let mut keys = BinaryCopy::with_capacity(events.len() * 64);
    for e in events {
        keys.row(2).bytea_concat(&dedupe_key(&e.pipeline, &e.event.id)).timestamptz_ms(e.event.received_ms);
    }
    keys.finish()
}

/// One `COPY` body of events.
fn event_rows(events: &[&BatchEvent]) -> Vec<u8> {
    let mut rows = BinaryCopy::with_capacity(
        events.iter().map(|e| e.event.payload.len() + e.event.event_type.as_ref().map_or(0, String::len) + 84).sum(),
    );
    for e in events {
        rows.row(6)
            .text(&e.pipeline)
            .text(&e.event.id)
            .timestamptz_ms(e.event.time_ms)
            .timestamptz_ms(e.event.received_ms)
            .text(&e.event.payload)
            .text_or_null(e.event.event_type.as_deref());
    }
    rows.finish()
}

/// Sends one binary `COPY … FROM STDIN` body.
async fn copy_in(conn: &mut PgConnection, statement: &'static str, body: Vec<u8>) -> Result<(), sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    copy.send(body).await?;
    copy.finish().await?;
    Ok(())
}

/// Inserts the keys not stored yet and keeps only their events in `events`.
async fn keep_new_keys(conn: &mut PgConnection, events: &mut Vec<&BatchEvent>) -> Result<(), StoreError> {
    let keys: Vec<Vec<u8>> = events.iter().map(|e| dedupe_key(&e.pipeline, &e.event.id).concat()).collect();
    let seen: Vec<DateTime<Utc>> = events.iter().map(|e| from_ms(e.event.received_ms)).collect();
    let new_keys: std::collections::HashSet<Vec<u8>> =
        sqlx::query_scalar(DEDUPE_INSERT).bind(&keys).bind(&seen).fetch_all(&mut *conn).await?.into_iter().collect();
    let mut is_new = keys.iter().map(|key| new_keys.contains(key));
    events.retain(|_| is_new.next().expect("one key per event"));
    Ok(())
}

/// Reads the recorded layout, or chooses and builds one: a TimescaleDB hypertable when the
/// extension is installed and preloaded (either license), native partitioning otherwise. The
/// choice, its tables and its record are one transaction: a failure leaves nothing half made,
/// and the next start chooses again. A database that has a layout keeps it.
async fn ensure_layout(conn: &mut PgConnection) -> Result<Layout, StoreError> {
    let recorded: Option<String> = sqlx::query_scalar("SELECT value FROM dash_meta WHERE key = 'events_layout'")
        .fetch_optional(&mut *conn)
        .await?;
    match recorded.as_deref() {
        Some("timescale") => return Ok(Layout::Timescale),
        Some("partitioned") => return Ok(Layout::Partitioned),
        _ => {}
    }
    let offer = timescale::offer(conn).await?;
    if let Some(why) = offer.refusal() {
        tracing::info!(reason = why, "events layout: native partitioning");
        return build_layout(conn, Layout::Partitioned).await;
    }
    match build_layout(conn, Layout::Timescale).await {
        Ok(layout) => {
            let license = offer.license.as_deref().unwrap_or("unknown");
            tracing::info!(license, "events layout: timescaledb hypertable");
            Ok(layout)
        }
        // The role may not create the extension, or the server will not do it: partitioned for
        // good. Any other error (a lock, a dropped connection) fails this start; nothing was
        // recorded, so the next start chooses again.
        Err(StoreError::Database(sqlx::Error::Database(db)))
            if matches!(db.code().as_deref(), Some("42501" | "0A000" | "58P01" | "42704" | "22023")) =>
        {
            tracing::warn!(error = %db, "timescaledb is preloaded but cannot be used here; events layout: native partitioning");
            build_layout(conn, Layout::Partitioned).await
        }
        Err(err) => Err(err),
    }
}

/// Builds `layout` and records it, in one transaction.
async fn build_layout(conn: &mut PgConnection, layout: Layout) -> Result<Layout, StoreError> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    match layout {
        Layout::Timescale => timescale::create_events(&mut tx).await?,
        Layout::Partitioned => {
            for statement in [
                &format!("CREATE TABLE IF NOT EXISTS events ({EVENTS_COLUMNS}) PARTITION BY RANGE (event_time)"),
                // Events far in the past or future, outside any day partition.
                "CREATE TABLE IF NOT EXISTS events_default PARTITION OF events DEFAULT",
                // Ascending: new events append at its right-hand end (see migration 0005).
                "CREATE INDEX IF NOT EXISTS events_pipeline_time ON events (pipeline_id, event_time)",
            ] {
                sqlx::query(AssertSqlSafe(statement)).execute(&mut *tx).await?;
            }
        }
    }
    sqlx::query("INSERT INTO dash_meta (key, value) VALUES ('events_layout', $1) ON CONFLICT (key) DO NOTHING")
        .bind(layout.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(layout)
}

fn partition_name(day_start_ms: i64) -> String {
    format!("events_p{}", from_ms(day_start_ms).format("%Y%m%d"))
}

/// Creates the day partitions from yesterday to [`PARTITIONS_AHEAD_DAYS`] ahead. Rows already
/// in the default partition for a new day are moved into it. Returns how many were created.
/// The days (UTC starts, unix ms) kept ready: yesterday (late events) to [`PARTITIONS_AHEAD_DAYS`]
/// ahead.
fn days_around(now: i64) -> Vec<i64> {
    let today = now - now.rem_euclid(DAY_MS);
    (-1..=PARTITIONS_AHEAD_DAYS).map(|offset| today + offset * DAY_MS).collect()
}

async fn ensure_partitions(conn: &mut PgConnection, now: i64) -> Result<u64, StoreError> {
    let today = now - now.rem_euclid(DAY_MS);
    let mut created = 0;
    for offset in -1..=PARTITIONS_AHEAD_DAYS {
        let start = today + offset * DAY_MS;
        let name = partition_name(start);
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(&name).fetch_one(&mut *conn).await?;
        if exists {
            continue;
        }
        let (from, to) = (from_ms(start).to_rfc3339(), from_ms(start + DAY_MS).to_rfc3339());
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        // The name is made of digits only; bounds are RFC 3339 text we formatted.
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::query(AssertSqlSafe(format!(
            "WITH moved AS (DELETE FROM events_default WHERE event_time >= '{from}' AND event_time < '{to}' \
             RETURNING *) INSERT INTO {name} SELECT * FROM moved"
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::query(AssertSqlSafe(format!(
            "ALTER TABLE events ATTACH PARTITION {name} FOR VALUES FROM ('{from}') TO ('{to}')"
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        created += 1;
    }
    Ok(created)
}

/// Drops day partitions that end before `cutoff_ms`. Returns how many.
async fn drop_partitions_before(conn: &mut PgConnection, cutoff_ms: i64) -> Result<u64, StoreError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'events'::regclass AND c.relname ~ '^events_p[0-9]{8}$'",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut dropped = 0;
    for name in names {
        let Ok(day) = chrono::NaiveDate::parse_from_str(&name["events_p".len()..], "%Y%m%d") else { continue };
        let day_end = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_millis() + DAY_MS;
        if day_end <= cutoff_ms {
            sqlx::query(AssertSqlSafe(format!("DROP TABLE {name}"))).execute(&mut *conn).await?;
            dropped += 1;
        }
    }
    Ok(dropped)
}
