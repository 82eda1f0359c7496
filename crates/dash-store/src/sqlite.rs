//! SQLite: the embedded default. One writer connection (SQLite serializes writers anyway, and
//! queueing in-process is fairer than busy-waiting on the file lock), a small reader pool.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use dash_domain::{PipelineId, PipelineStats, format_ms, now_ms};
use dash_signature::{BearerToken, SigningSecret};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use crate::retention::{Cutoffs, RETENTIONS, retention_from};
use crate::{
    BatchEvent, BatchOutcome, IssuedCredentials, MaintenanceReport, PipelineAuth, PipelineRecord, PipelineTally,
    ROTATION_GRACE, SeriesPoint, StoreError, StoredEvent, UpdatedPipeline, minute_of,
};

/// A new event of a batch, for the pipelines' views: pipeline, time, payload, type of its own.
type FreshEvent<'a> = (Cow<'a, str>, i64, Cow<'a, str>, Option<Cow<'a, str>>);

/// Rows per INSERT statement (7 parameters each, well under SQLite's 32766).
const ROWS_PER_STATEMENT: usize = 1000;

#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) writer: SqlitePool,
    pub(crate) readers: SqlitePool,
    views: crate::views::ViewCache,
}

const PIPELINE_COLUMNS: &str =
    "id, name, created_at, seq, event_count, duplicate_count, last_event_at, retention_ms, set_aside_count, verify";

fn record_from(row: &sqlx::sqlite::SqliteRow) -> Result<PipelineRecord, sqlx::Error> {
    Ok(PipelineRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: format_ms(row.try_get("created_at")?),
        stats: PipelineStats {
            count: row.try_get("event_count")?,
            seq: row.try_get("seq")?,
            duplicates: row.try_get("duplicate_count")?,
            last_event_at: row.try_get::<Option<i64>, _>("last_event_at")?.map(format_ms),
        },
        retention: retention_from(row.try_get("retention_ms")?),
        set_aside: row.try_get("set_aside_count")?,
        verify: row.try_get("verify")?,
    })
}

impl SqliteStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before the intake log is told it may forget the batch.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_millis(500))
            .pragma("temp_store", "memory");
        if let Some(parent) = options.get_filename().parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)?;
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self { writer, readers, views: Default::default() })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut migrator = sqlx::migrate!("../../migrations/sqlite");
        // A database a newer release migrated stays usable by this one (a rollback): every
        // migration only adds.
        migrator.set_ignore_missing(true);
        migrator.run(&self.writer).await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        // A write probe: the writer lock is what a flush needs, so that is what readiness checks.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        tx.rollback().await?;
        Ok(())
    }

    pub async fn create_pipeline(&self, id: &PipelineId, name: &str) -> Result<IssuedCredentials, StoreError> {
        let secret = SigningSecret::generate();
        let token = BearerToken::generate();
        let inserted = sqlx::query(
            "INSERT INTO pipelines (id, name, secret, token_hash, created_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(id.as_str())
        .bind(name)
        .bind(secret.expose())
        .bind(token.hash())
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(id.to_string()));
        }
        let record =
            self.find_in(&self.writer, id.as_str()).await?.ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        Ok(IssuedCredentials { record, secret, token })
    }

    pub async fn rotate_credentials(&self, id_or_name: &str) -> Result<IssuedCredentials, StoreError> {
        let secret = SigningSecret::generate();
        let token = BearerToken::generate();
        let grace_until = now_ms() + ROTATION_GRACE.as_millis() as i64;
        let updated = sqlx::query(
            "UPDATE pipelines SET previous_secret = secret, previous_token_hash = token_hash, \
             previous_expires_at = ?, secret = ?, token_hash = ? WHERE id = ? OR name = ?",
        )
        .bind(grace_until)
        .bind(secret.expose())
        .bind(token.hash())
        .bind(id_or_name)
        .bind(id_or_name)
        .execute(&self.writer)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound(id_or_name.to_owned()));
        }
        let record =
            self.find_in(&self.writer, id_or_name).await?.ok_or_else(|| StoreError::NotFound(id_or_name.to_owned()))?;
        Ok(IssuedCredentials { record, secret, token })
    }

    pub async fn list_pipelines(&self) -> Result<Vec<PipelineRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {PIPELINE_COLUMNS} FROM pipelines ORDER BY id")))
            .fetch_all(&self.readers)
            .await?;
        Ok(rows.iter().map(record_from).collect::<Result<_, _>>()?)
    }

    pub async fn find_pipeline(&self, id_or_name: &str) -> Result<Option<PipelineRecord>, StoreError> {
        self.find_in(&self.readers, id_or_name).await
    }

    async fn find_in(&self, pool: &SqlitePool, id_or_name: &str) -> Result<Option<PipelineRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PIPELINE_COLUMNS} FROM pipelines WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1"
        )))
        .bind(id_or_name)
        .fetch_optional(pool)
        .await?;
        Ok(row.as_ref().map(record_from).transpose()?)
    }

    pub async fn pipeline_auths(&self) -> Result<Vec<PipelineAuth>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, secret, token_hash, previous_secret, previous_token_hash, previous_expires_at \
             FROM pipelines",
        )
        .fetch_all(&self.readers)
        .await?;
        let now = now_ms();
        let mut auths = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let mut secrets = vec![SigningSecret::parse(row.try_get("secret")?)?];
            let mut token_hashes = vec![row.try_get::<String, _>("token_hash")?];
            let grace = row.try_get::<Option<i64>, _>("previous_expires_at")?.is_some_and(|until| until > now);
            if grace {
                if let Some(previous) = row.try_get::<Option<String>, _>("previous_secret")? {
                    secrets.push(SigningSecret::parse(&previous)?);
                }
                if let Some(previous) = row.try_get::<Option<String>, _>("previous_token_hash")? {
                    token_hashes.push(previous);
                }
            }
            auths.push(PipelineAuth {
                id: PipelineId::parse(&id)?,
                name: row.try_get("name")?,
                secrets,
                token_hashes,
                provider: None,
                previous_expires_ms: if grace { row.try_get("previous_expires_at")? } else { None },
            });
        }
        Ok(auths)
    }

    pub async fn write_batch(&self, events: &[BatchEvent]) -> Result<BatchOutcome, StoreError> {
        let mut tally: BTreeMap<&str, PipelineTally> = BTreeMap::new();
        for e in events {
            tally.entry(&*e.pipeline).or_default().received += 1;
        }
        let mut minutes: BTreeMap<(&str, i64), i64> = BTreeMap::new();
        // The new events (pipeline, time, payload, type of its own), for the pipelines' views.
        let mut fresh: Vec<FreshEvent<'_>> = Vec::with_capacity(events.len());

        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        // The batch's number: a view made later counts its events as history (its cut, see
        // view_history.rs), one made earlier counts them live below.
        let batch: i64 = sqlx::query_scalar("UPDATE event_batches SET seq = seq + 1 WHERE id = 1 RETURNING seq")
            .fetch_one(&mut *tx)
            .await?;
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO events (pipeline_id, event_id, event_time, received_at, payload, event_type, batch_seq) ",
            );
            insert.push_values(chunk, |mut row, e| {
                row.push_bind(&*e.pipeline)
                    .push_bind(&e.event.id)
                    .push_bind(e.event.time_ms)
                    .push_bind(e.event.received_ms)
                    .push_bind(&e.event.payload)
                    .push_bind(e.event.event_type.as_deref())
                    .push_bind(batch);
            });
            insert.push(" ON CONFLICT (pipeline_id, event_id) DO NOTHING");
            let result = insert.build().execute(&mut *tx).await?;
            let inserted_rows = result.rows_affected();
            if inserted_rows == chunk.len() as u64 {
                // No duplicates (the usual case): every row of the chunk counts.
                for e in chunk {
                    tally_inserted(&mut tally, &mut minutes, &e.pipeline, e.event.time_ms, e.event.received_ms);
                    fresh.push((
                        Cow::Borrowed(&*e.pipeline),
                        e.event.time_ms,
                        Cow::Borrowed(&e.event.payload),
                        e.event.event_type.as_deref().map(Cow::Borrowed),
                    ));
                }
            } else if inserted_rows > 0 {
                // Under the write lock the inserted rows took consecutive rowids ending at the last one.
                let first_rowid = result.last_insert_rowid() - inserted_rows as i64 + 1;
                let rows = sqlx::query(
                    "SELECT pipeline_id, event_time, received_at, payload, event_type FROM events WHERE rowid >= ?",
                )
                .bind(first_rowid)
                .fetch_all(&mut *tx)
                .await?;
                for row in rows {
                    let pipeline: String = row.try_get(0)?;
                    let time: i64 = row.try_get(1)?;
                    tally_inserted(&mut tally, &mut minutes, &pipeline, time, row.try_get(2)?);
                    let event_type: Option<String> = row.try_get(4)?;
                    fresh.push((Cow::Owned(pipeline), time, Cow::Owned(row.try_get(3)?), event_type.map(Cow::Owned)));
                }
            }
        }

        if !minutes.is_empty() {
            let mut rollup: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO event_rollup_minute (pipeline_id, minute, event_count) ");
            rollup.push_values(&minutes, |mut row, ((pipeline, minute), count)| {
                row.push_bind(*pipeline).push_bind(*minute).push_bind(*count);
            });
            rollup.push(
                " ON CONFLICT (pipeline_id, minute) DO UPDATE SET event_count = event_count + excluded.event_count",
            );
            rollup.build().execute(&mut *tx).await?;
        }

        let at = format_ms(now_ms());
        let mut outcome = BatchOutcome::default();
        for (pipeline, t) in &tally {
            let row = sqlx::query(
                "UPDATE pipelines SET seq = seq + 1, event_count = event_count + ?1, \
                 duplicate_count = duplicate_count + ?2, \
                 last_event_at = COALESCE(MAX(last_event_at, ?3), last_event_at, ?3) \
                 WHERE id = ?4 RETURNING seq, event_count, duplicate_count, last_event_at, views_version, groups_tag",
            )
            .bind(t.inserted)
            .bind(t.received - t.inserted)
            .bind(t.newest_received_ms)
            .bind(*pipeline)
            .fetch_optional(&mut *tx)
            .await?;
            let updated = match row {
                Some(row) => Some(UpdatedPipeline {
                    seq: row.try_get(0)?,
                    count: row.try_get(1)?,
                    duplicates: row.try_get(2)?,
                    last_event_at_ms: row.try_get(3)?,
                    views_version: row.try_get(4)?,
                    groups_tag: row.try_get(5)?,
                }),
                None => None,
            };
            let touches = match &updated {
                Some(row) if t.inserted > 0 => {
                    let of_pipeline = fresh
                        .iter()
                        .filter(|(p, _, _, _)| p == pipeline)
                        .map(|(_, time, payload, event_type)| (*time, payload.as_ref(), event_type.as_deref()));
                    crate::views::count_batch_sqlite(
                        &mut tx,
                        &self.views,
                        pipeline,
                        (row.views_version, row.groups_tag),
                        of_pipeline,
                    )
                    .await?
                }
                _ => Vec::new(),
            };
            outcome.record(pipeline, t, updated, &at, touches);
        }
        tx.commit().await?;
        Ok(outcome)
    }

    pub async fn series(
        &self,
        pipeline: &str,
        from_ms: i64,
        to_ms: i64,
        bucket_ms: i64,
    ) -> Result<Vec<SeriesPoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT (minute - ((minute - ?2) % ?4)) AS bucket, SUM(event_count) FROM event_rollup_minute \
             WHERE pipeline_id = ?1 AND minute >= ?2 AND minute < ?3 GROUP BY bucket ORDER BY bucket",
        )
        .bind(pipeline)
        .bind(from_ms)
        .bind(to_ms)
        .bind(bucket_ms)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(|r| Ok(SeriesPoint { t: r.try_get(0)?, count: r.try_get(1)? })).collect()
    }

    pub async fn recent_events(&self, pipeline: &str, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_id, event_time, received_at, payload, event_type FROM events \
             WHERE pipeline_id = ? ORDER BY event_time DESC, rowid DESC LIMIT ?",
        )
        .bind(pipeline)
        .bind(limit)
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|r| {
                let payload: String = r.try_get(3)?;
                Ok(StoredEvent::new(
                    r.try_get(0)?,
                    format_ms(r.try_get(1)?),
                    format_ms(r.try_get(2)?),
                    payload,
                    r.try_get(4)?,
                ))
            })
            .collect()
    }

    /// Deletes each pipeline's events (and rollup minutes) older than its retention, or
    /// `retention` for pipelines without their own. SQLite keeps the dedupe key on the events
    /// themselves, so it lives exactly as long as they do.
    pub async fn maintain(&self, retention: Duration) -> Result<MaintenanceReport, StoreError> {
        let pipelines: Vec<(String, Option<i64>)> = sqlx::query_as(RETENTIONS).fetch_all(&self.readers).await?;
        let now = now_ms();
        let cutoffs = Cutoffs::new(pipelines, retention, now);
        let mut report = MaintenanceReport::default();
        for (pipeline, cutoff) in &cutoffs.per_pipeline {
            report.events_deleted += sqlx::query("DELETE FROM events WHERE pipeline_id = ? AND event_time < ?")
                .bind(pipeline)
                .bind(cutoff)
                .execute(&self.writer)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM event_rollup_minute WHERE pipeline_id = ? AND minute < ?")
                .bind(pipeline)
                .bind(cutoff)
                .execute(&self.writer)
                .await?;
        }
        let views = sqlx::query_as(crate::views::VIEWS_KEPT).fetch_all(&self.readers).await?;
        for (pipeline, view, cutoff) in crate::views::view_cutoffs(views, &cutoffs.per_pipeline, now) {
            report.view_states_pruned += sqlx::query(crate::views::PRUNE_STATES)
                .bind(pipeline)
                .bind(view)
                .bind(cutoff)
                .execute(&self.writer)
                .await?
                .rows_affected();
        }
        Ok(report)
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
    }
}

/// Counts one inserted event into its pipeline's tally and its minute of the rollup. The keys
/// borrow from the batch, which names every pipeline it touches.
fn tally_inserted<'b>(
    tally: &mut BTreeMap<&'b str, PipelineTally>,
    minutes: &mut BTreeMap<(&'b str, i64), i64>,
    pipeline: &str,
    event_time: i64,
    received_ms: i64,
) {
    let Some((&key, _)) = tally.get_key_value(pipeline) else {
        return;
    };
    let t = tally.get_mut(key).expect("key just found");
    t.inserted += 1;
    t.newest_received_ms = Some(t.newest_received_ms.map_or(received_ms, |n| n.max(received_ms)));
    t.oldest_received_ms = Some(t.oldest_received_ms.map_or(received_ms, |n| n.min(received_ms)));
    *minutes.entry((key, minute_of(event_time))).or_default() += 1;
}
