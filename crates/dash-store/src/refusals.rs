//! Deliveries refused for their credentials, counted per pipeline, minute and reason. Nodes add
//! what they counted every few seconds (one upsert per pipeline, minute and reason, never one
//! write per refused request); a pipeline's page and API read the last hour. Kept
//! [`REFUSALS_KEPT`]; both backends share the SQL text.

use std::time::Duration;

use crate::{Store, StoreError};

/// How long refusal counts are kept.
pub const REFUSALS_KEPT: Duration = Duration::from_secs(2 * 86_400);

const ADD: &str = "INSERT INTO webhook_refusals (pipeline_id, minute, reason, refused, last_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (pipeline_id, minute, reason) DO UPDATE SET \
     refused = webhook_refusals.refused + excluded.refused, \
     last_at = CASE WHEN excluded.last_at > webhook_refusals.last_at \
                    THEN excluded.last_at ELSE webhook_refusals.last_at END";
const SINCE: &str = "SELECT reason, CAST(SUM(refused) AS BIGINT), CAST(MAX(last_at) AS BIGINT) \
     FROM webhook_refusals WHERE pipeline_id = $1 AND minute >= $2 GROUP BY reason ORDER BY reason";
const PRUNE: &str = "DELETE FROM webhook_refusals WHERE minute < $1";

/// Refusals one node counted in one minute for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalCount {
    pub pipeline: String,
    /// Unix ms of the minute's start.
    pub minute: i64,
    pub reason: &'static str,
    pub refused: i64,
    /// Unix ms of the latest.
    pub last_at: i64,
}

/// A pipeline's refusals over a span, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refusals {
    /// (reason, refused), by reason.
    pub by_reason: Vec<(String, i64)>,
    /// Unix ms of the latest refusal, and its reason.
    pub latest: Option<(i64, String)>,
}

impl Refusals {
    pub fn total(&self) -> i64 {
        self.by_reason.iter().map(|(_, n)| n).sum()
    }
}

impl Store {
    /// Adds what a node counted (one transaction).
    pub async fn add_refusals(&self, counts: &[RefusalCount]) -> Result<(), StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        on_backend!(self, writer, |pool| {
            let mut tx = pool.begin().await?;
            for c in counts {
                sqlx::query(ADD)
                    .bind(&c.pipeline)
                    .bind(c.minute)
                    .bind(c.reason)
                    .bind(c.refused)
                    .bind(c.last_at)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?
        });
        Ok(())
    }

    /// The pipeline's refusals since `since_ms`.
    pub async fn refusals(&self, pipeline: &str, since_ms: i64) -> Result<Refusals, StoreError> {
        let minute = since_ms - since_ms.rem_euclid(60_000);
        let rows: Vec<(String, i64, i64)> = on_backend!(self, readers, |pool| {
            sqlx::query_as(SINCE).bind(pipeline).bind(minute).fetch_all(pool).await?
        });
        let latest = rows.iter().max_by_key(|(_, _, at)| *at).map(|(reason, _, at)| (*at, reason.clone()));
        Ok(Refusals { by_reason: rows.into_iter().map(|(reason, n, _)| (reason, n)).collect(), latest })
    }

    /// Drops counts older than [`REFUSALS_KEPT`].
    pub(crate) async fn prune_refusals(&self, now_ms: i64) -> Result<u64, StoreError> {
        let cutoff = now_ms - REFUSALS_KEPT.as_millis() as i64;
        Ok(on_backend!(self, writer, |pool| sqlx::query(PRUNE).bind(cutoff).execute(pool).await?.rows_affected()))
    }
}
