//! Deliveries refused for their credentials, counted on this node per pipeline, minute and
//! reason, and added to the store every [`FLUSH_EVERY`] by [`flush_refusals`] (a task the
//! binary owns). A flood of bad requests costs a counter increment each, and the store one
//! upsert per pipeline, minute and reason per flush. The counts kept between flushes are bounded
//! ([`KEYS_MAX`]): past it further keys are dropped (the metric still counts them).

use dash_task::StopSignal;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;

use dash_store::RefusalCount;

use crate::AppState;

/// How often the counts go to the store.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// How long one flush may wait for the store.
const FLUSH_DEADLINE: Duration = Duration::from_secs(2);
/// Most (pipeline, minute, reason) counts held between flushes.
const KEYS_MAX: usize = 10_000;

/// A pipeline, a minute (unix ms of its start) and a reason.
type TallyKey = (String, i64, &'static str);

#[derive(Default)]
pub(crate) struct RefusalTally {
    /// What was counted under each key: (refused, latest unix ms).
    counts: Mutex<HashMap<TallyKey, (i64, i64)>>,
}

impl RefusalTally {
    pub(crate) fn count(&self, pipeline: &str, reason: &'static str, at_ms: i64) {
        let minute = at_ms - at_ms.rem_euclid(60_000);
        let mut counts = self.counts.lock();
        let key = (pipeline.to_owned(), minute, reason);
        if counts.len() >= KEYS_MAX && !counts.contains_key(&key) {
            return;
        }
        let entry = counts.entry(key).or_insert((0, at_ms));
        entry.0 += 1;
        entry.1 = entry.1.max(at_ms);
    }

    fn take(&self) -> Vec<RefusalCount> {
        let counts = std::mem::take(&mut *self.counts.lock());
        counts
            .into_iter()
            .map(|((pipeline, minute, reason), (refused, last_at))| RefusalCount {
                pipeline,
                minute,
                reason,
                refused,
                last_at,
            })
            .collect()
    }

    /// Counts the store did not take, back for the next flush (within the bound).
    fn put_back(&self, rows: Vec<RefusalCount>) {
        for row in rows {
            let mut counts = self.counts.lock();
            let key = (row.pipeline, row.minute, row.reason);
            if counts.len() >= KEYS_MAX && !counts.contains_key(&key) {
                continue;
            }
            let entry = counts.entry(key).or_insert((0, row.last_at));
            entry.0 += row.refused;
            entry.1 = entry.1.max(row.last_at);
        }
    }

    async fn flush(&self, state: &AppState) {
        let rows = self.take();
        if rows.is_empty() {
            return;
        }
        // A store that does not answer holds neither the loop nor a shutdown for long.
        match tokio::time::timeout(FLUSH_DEADLINE, state.store.add_refusals(&rows)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "refusal counts not stored yet; kept for the next flush");
                self.put_back(rows);
            }
            Err(_) => self.put_back(rows),
        }
    }
}

/// Adds this node's refusal counts to the store every [`FLUSH_EVERY`] until stopped, then once
/// more.
pub async fn flush_refusals(state: AppState, stop: StopSignal) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => state.refusals.flush(&state).await,
            () = stop.cancelled() => break,
        }
    }
    state.refusals.flush(&state).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_group_by_pipeline_minute_and_reason_and_stay_bounded() {
        let tally = RefusalTally::default();
        tally.count("gh", "bad_signature", 60_000 + 5);
        tally.count("gh", "bad_signature", 60_000 + 9);
        tally.count("gh", "missing_signature", 60_000 + 7);
        tally.count("gh", "bad_signature", 120_000);
        let mut rows = tally.take();
        rows.sort_by_key(|r| (r.minute, r.reason));
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (rows[0].minute, rows[0].reason, rows[0].refused, rows[0].last_at),
            (60_000, "bad_signature", 2, 60_009)
        );
        assert!(tally.take().is_empty(), "taken once");
        tally.put_back(rows);
        assert_eq!(tally.take().len(), 3, "what the store did not take comes back");
        for i in 0..KEYS_MAX + 10 {
            tally.count(&format!("p{i}"), "bad_token", 0);
        }
        assert_eq!(tally.take().len(), KEYS_MAX);
    }
}
