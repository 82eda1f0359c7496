//! The job queue: apalis storage in the store's PostgreSQL database (schema `apalis`), or in a
//! SQLite file of its own beside the embedded store.
//!
//! Enqueueing is idempotent: every job carries a key naming its schedule and tick, and apalis
//! keeps a unique index on (queue, key). However many nodes enqueue the same tick, one job exists.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use apalis::prelude::{TaskBuilder, TaskSink, TaskSinkError};
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use dash_store::Store;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use crate::JobError;

/// The apalis queue (job type) Dash's jobs live in.
pub const QUEUE: &str = "dash.jobs";

/// Attempts a job gets, counting re-enqueues after its worker died. Source failures are retried
/// inside the job and recorded, not returned, so attempts are spent on infrastructure only.
pub const MAX_ATTEMPTS: usize = 5;

/// One unit of background work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "StoredJob", from = "StoredJob")]
pub enum Job {
    /// Fetch a pipeline's source for one tick.
    Poll { pipeline: String, tick_ms: i64 },
    /// Retention, dedupe pruning, partitions ahead, old jobs.
    Maintain { tick_ms: i64 },
    /// Compute a view's history. `made_ms` (when the view was made) tells a view deleted and made
    /// again apart from the one before it, whose generations start at 1 too.
    Backfill { pipeline: String, view: String, generation: i64, made_ms: i64 },
    /// Roll views' minutes up into their hours and days (`Store::roll_up_views`).
    Rollup { tick_ms: i64 },
    /// A kind of a later release (a rolling upgrade under way): done as nothing here.
    Unknown,
}

/// A job as the queue stores it (JSON tagged by `kind`). apalis stops a worker that meets a job
/// it cannot decode, so a kind added after a release is stored as one that release already
/// reads and does nothing with: an older node's worker never meets a job it cannot decode
/// during a rolling upgrade. A kind of a later release still is one, read as [`Job::Unknown`].
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum StoredJob {
    Poll {
        pipeline: String,
        tick_ms: i64,
    },
    Maintain {
        tick_ms: i64,
    },
    Backfill {
        pipeline: String,
        view: String,
        generation: i64,
        made_ms: i64,
    },
    #[serde(other)]
    Unknown,
}

/// [`Job::Rollup`] is stored as the history of this view of no pipeline: releases before it run
/// that history, find no such view and are done (no view is named so; names are slugs).
const ROLLUP_AS_HISTORY: &str = "@rollup";

impl From<Job> for StoredJob {
    fn from(job: Job) -> Self {
        match job {
            Job::Poll { pipeline, tick_ms } => Self::Poll { pipeline, tick_ms },
            Job::Maintain { tick_ms } => Self::Maintain { tick_ms },
            Job::Backfill { pipeline, view, generation, made_ms } => {
                Self::Backfill { pipeline, view, generation, made_ms }
            }
            Job::Rollup { tick_ms } => Self::Backfill {
                pipeline: String::new(),
                view: ROLLUP_AS_HISTORY.to_owned(),
                generation: 0,
                made_ms: tick_ms,
            },
            Job::Unknown => Self::Unknown,
        }
    }
}

impl From<StoredJob> for Job {
    fn from(job: StoredJob) -> Self {
        match job {
            StoredJob::Poll { pipeline, tick_ms } => Self::Poll { pipeline, tick_ms },
            StoredJob::Maintain { tick_ms } => Self::Maintain { tick_ms },
            StoredJob::Backfill { pipeline, view, made_ms, .. } if pipeline.is_empty() && view == ROLLUP_AS_HISTORY => {
                Self::Rollup { tick_ms: made_ms }
            }
            StoredJob::Backfill { pipeline, view, generation, made_ms } => {
                Self::Backfill { pipeline, view, generation, made_ms }
            }
            StoredJob::Unknown => Self::Unknown,
        }
    }
}

impl Job {
    /// The idempotency key: schedule and tick.
    pub fn key(&self) -> String {
        match self {
            Self::Poll { pipeline, tick_ms } => format!("poll:{pipeline}:{tick_ms}"),
            Self::Maintain { tick_ms } => format!("maintain:{tick_ms}"),
            Self::Rollup { tick_ms } => format!("rollup:{tick_ms}"),
            Self::Unknown => "unknown".to_owned(),
            // One job per view and generation: a job that dies part way is run again by the
            // queue, and goes on from where the view stands.
            Self::Backfill { pipeline, view, generation, made_ms } => {
                format!("backfill:{pipeline}:{view}:{made_ms}:{generation}")
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Poll { .. } => "poll",
            Self::Maintain { .. } => "maintain",
            Self::Backfill { .. } => "backfill",
            Self::Rollup { .. } => "rollup",
            Self::Unknown => "unknown",
        }
    }
}

/// Worker liveness as apalis sees it: a worker silent for `HEARTBEAT × MISSED_HEARTBEATS` is dead
/// and its jobs go back to the queue (whole seconds: apalis compares in seconds).
pub const HEARTBEAT: Duration = Duration::from_secs(1);
pub const MISSED_HEARTBEATS: usize = 3;

#[derive(Clone)]
pub enum JobQueue {
    Postgres(PostgresStorage<Job>),
    Sqlite(SqliteStorage<Job>),
}

impl JobQueue {
    /// Opens (and migrates) the queue next to the store: the same PostgreSQL database, or
    /// `jobs.db` in `data_dir` for SQLite (apalis tunes its connection for speed over
    /// durability, which the events file must not share; a lost job is re-enqueued at its tick).
    pub async fn open(store: &Store, data_dir: &Path, batch: usize) -> Result<Self, JobError> {
        match store {
            Store::Postgres(pg) => {
                let pool = pg.jobs_pool().clone();
                PostgresStorage::setup(&pool).await?;
                let config = apalis_postgres::Config::default()
                    .queue(QUEUE)
                    .heartbeat_interval(HEARTBEAT)
                    .missed_heartbeats(MISSED_HEARTBEATS)
                    .batch_size(batch);
                Ok(Self::Postgres(PostgresStorage::new(&pool).with_config(config)))
            }
            Store::Sqlite(_) => {
                std::fs::create_dir_all(data_dir).map_err(JobError::Location)?;
                let url = format!("sqlite://{}", data_dir.join("jobs.db").display());
                let options =
                    SqliteConnectOptions::from_str(&url)?.create_if_missing(true).busy_timeout(Duration::from_secs(2));
                let pool = SqlitePoolOptions::new().max_connections(2).connect_with(options).await?;
                SqliteStorage::setup(&pool).await?;
                let config = apalis_sqlite::Config::default()
                    .queue(QUEUE)
                    .heartbeat_interval(HEARTBEAT)
                    .missed_heartbeats(MISSED_HEARTBEATS)
                    .batch_size(batch);
                Ok(Self::Sqlite(SqliteStorage::new(&pool).with_config(config)))
            }
        }
    }

    /// Enqueues `job` unless a job with its key exists. `true` when this call created it.
    pub async fn enqueue(&mut self, job: Job) -> Result<bool, JobError> {
        let key = job.key();
        let task = TaskBuilder::new(job).idempotency_key(&key).max_attempts(MAX_ATTEMPTS).build();
        match self {
            Self::Postgres(storage) => match storage.push_task(task).await {
                Ok(()) => Ok(true),
                Err(TaskSinkError::PushError(apalis_postgres::Error::Database(sqlx::Error::Database(db))))
                    if db.is_unique_violation() =>
                {
                    Ok(false)
                }
                Err(err) => Err(JobError::Enqueue(err.to_string())),
            },
            // `ON CONFLICT DO NOTHING` on SQLite: a repeat is silently absorbed.
            Self::Sqlite(storage) => {
                storage.push_task(task).await.map_err(|e| JobError::Enqueue(e.to_string()))?;
                Ok(true)
            }
        }
    }

    /// Jobs waiting to run (pending or queued) and jobs running now, across the cluster.
    pub async fn depth(&self) -> Result<(i64, i64), JobError> {
        let depth = match self {
            Self::Postgres(storage) => {
                sqlx::query_as(
                    "SELECT count(*) FILTER (WHERE status IN ('Pending', 'Queued')), \
                     count(*) FILTER (WHERE status = 'Running') FROM apalis.jobs WHERE job_type = $1",
                )
                .bind(QUEUE)
                .fetch_one(storage.pool())
                .await?
            }
            Self::Sqlite(storage) => {
                sqlx::query_as(
                    "SELECT count(*) FILTER (WHERE status IN ('Pending', 'Queued')), \
                     count(*) FILTER (WHERE status = 'Running') FROM Jobs WHERE job_type = ?1",
                )
                .bind(QUEUE)
                .fetch_one(storage.pool())
                .await?
            }
        };
        Ok(depth)
    }

    /// Deletes finished jobs older than `older_than` and workers silent that long. Keys live as
    /// long as their jobs, so `older_than` must exceed how late a tick may still be enqueued.
    pub async fn vacuum(&self, older_than: Duration) -> Result<u64, JobError> {
        let secs = older_than.as_secs() as i64;
        let deleted = match self {
            Self::Postgres(storage) => {
                let pool = storage.pool();
                let jobs = sqlx::query(
                    "DELETE FROM apalis.jobs WHERE job_type = $1 AND status IN ('Done', 'Killed', 'Failed') \
                     AND attempts >= CASE WHEN status = 'Failed' THEN max_attempts ELSE 0 END \
                     AND COALESCE(done_at, run_at) < now() - make_interval(secs => $2)",
                )
                .bind(QUEUE)
                .bind(secs as f64)
                .execute(pool)
                .await?;
                sqlx::query(
                    "DELETE FROM apalis.workers w WHERE worker_type = $1 AND last_seen < now() - make_interval(secs => $2) \
                     AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.lock_by = w.id)",
                )
                .bind(QUEUE)
                .bind(secs as f64)
                .execute(pool)
                .await?;
                jobs.rows_affected()
            }
            Self::Sqlite(storage) => {
                let pool = storage.pool();
                let cutoff = chrono::Utc::now().timestamp() - secs;
                let jobs = sqlx::query(
                    "DELETE FROM Jobs WHERE job_type = ?1 AND status IN ('Done', 'Killed', 'Failed') \
                     AND attempts >= CASE WHEN status = 'Failed' THEN max_attempts ELSE 0 END \
                     AND COALESCE(done_at, run_at) < ?2",
                )
                .bind(QUEUE)
                .bind(cutoff)
                .execute(pool)
                .await?;
                jobs.rows_affected()
            }
        };
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The jobs as the release before view levels declared them: what an older node decodes.
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum EarlierJob {
        Poll { pipeline: String, tick_ms: i64 },
        Maintain { tick_ms: i64 },
        Backfill { pipeline: String, view: String, generation: i64, made_ms: i64 },
    }

    #[test]
    fn every_job_reads_back_and_an_earlier_release_reads_every_job() {
        let jobs = [
            Job::Poll { pipeline: "p".into(), tick_ms: 1 },
            Job::Maintain { tick_ms: 2 },
            Job::Backfill { pipeline: "p".into(), view: "v".into(), generation: 3, made_ms: 4 },
            Job::Rollup { tick_ms: 5 },
        ];
        for job in jobs {
            let text = serde_json::to_string(&job).unwrap();
            assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), job, "{text}");
            let earlier: EarlierJob = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            if let Job::Rollup { .. } = job {
                // The history of no view: the earlier release finds none and is done.
                assert!(
                    matches!(earlier, EarlierJob::Backfill { pipeline, view, .. } if pipeline.is_empty() && !dash_domain::is_slug(&view, 64))
                );
            }
        }
        // A kind of a later release: nothing to do, not a stopped worker.
        assert_eq!(serde_json::from_str::<Job>(r#"{"kind":"compact","tick_ms":1}"#).unwrap(), Job::Unknown);
    }
}
