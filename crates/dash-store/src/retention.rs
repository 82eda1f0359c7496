//! Per-pipeline retention: how long each pipeline keeps its events, and what one maintenance
//! pass may therefore delete. Both backends share the SQL text.

use std::time::Duration;

use crate::{Store, StoreError};

const SET: &str = "UPDATE pipelines SET retention_ms = $1 WHERE id = $2";

/// Every pipeline with its own retention in milliseconds (NULL: the node default).
pub(crate) const RETENTIONS: &str = "SELECT id, retention_ms FROM pipelines";

pub(crate) fn retention_from(ms: Option<i64>) -> Option<Duration> {
    ms.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// What one maintenance pass may delete, worked out at one instant.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Cutoffs {
    /// Each pipeline with the time (unix ms) before which its events go.
    pub per_pipeline: Vec<(String, i64)>,
    /// Before this instant no pipeline keeps anything: whole partitions or chunks ending before
    /// it may be dropped.
    pub everyone: i64,
}

impl Cutoffs {
    pub(crate) fn new(pipelines: Vec<(String, Option<i64>)>, default: Duration, now_ms: i64) -> Self {
        let default = millis(default);
        let per_pipeline: Vec<(String, i64)> =
            pipelines.into_iter().map(|(id, own)| (id, now_ms.saturating_sub(own.unwrap_or(default).max(0)))).collect();
        let everyone = per_pipeline.iter().map(|(_, cutoff)| *cutoff).fold(now_ms.saturating_sub(default), i64::min);
        Self { per_pipeline, everyone }
    }
}

impl Store {
    /// Sets how long a pipeline keeps its events; `None` goes back to the node default. The
    /// next maintenance pass applies it.
    pub async fn set_retention(&self, pipeline: &str, retention: Option<Duration>) -> Result<(), StoreError> {
        let ms = retention.map(millis);
        let updated = on_backend!(self, writer, |pool| {
            sqlx::query(SET).bind(ms).bind(pipeline).execute(pool).await?.rows_affected()
        });
        if updated == 0 {
            return Err(StoreError::NotFound(pipeline.to_owned()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn each_pipeline_gets_its_own_cutoff_and_partitions_go_only_when_nobody_keeps_them() {
        let now = 1_000 * HOUR;
        let cutoffs = Cutoffs::new(
            vec![("short".into(), Some(HOUR)), ("default".into(), None), ("long".into(), Some(100 * HOUR))],
            Duration::from_secs(10 * 3600),
            now,
        );
        assert_eq!(
            cutoffs.per_pipeline,
            vec![("short".into(), now - HOUR), ("default".into(), now - 10 * HOUR), ("long".into(), now - 100 * HOUR)]
        );
        assert_eq!(cutoffs.everyone, now - 100 * HOUR);
    }

    #[test]
    fn with_no_pipelines_the_default_bounds_what_may_be_dropped() {
        let cutoffs = Cutoffs::new(Vec::new(), Duration::from_secs(3600), 10 * HOUR);
        assert_eq!(cutoffs.everyone, 9 * HOUR);
        let huge = Cutoffs::new(vec![("p".into(), Some(i64::MAX))], Duration::MAX, 10 * HOUR);
        assert_eq!(huge.everyone, 10 * HOUR - i64::MAX);
    }
}
