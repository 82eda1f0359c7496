//! End-to-end latency per pipeline, as this node sees it: from the moment an event was
//! acknowledged (its 202, the `received` span an update carries) to the moment the hub hands
//! the update to the browsers following the pipeline. Kept for the last hour in per-minute
//! samples, bounded per minute, so a busy pipeline costs the same memory as a quiet one.
//!
//! The two instants are read on different nodes in a split deployment (the ingestor's clock and
//! the web node's): clock skew between them adds to the figure.

use std::collections::VecDeque;

use serde::Serialize;

/// How far back the figures look.
pub const WINDOW_MS: i64 = 3_600_000;
/// Samples kept per minute: a minute with more batches keeps its latest ones.
const SAMPLES_PER_MINUTE: usize = 64;

/// p50 and p99 over the window, in milliseconds, and how many batches they come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LatencySummary {
    pub p50_ms: u32,
    pub p99_ms: u32,
    pub batches: u64,
}

struct Minute {
    start_ms: i64,
    samples: Vec<u32>,
    batches: u64,
}

#[derive(Default)]
pub(crate) struct LatencyWindow {
    minutes: VecDeque<Minute>,
}

impl LatencyWindow {
    /// A batch delivered at `now_ms` whose new events were acknowledged from `received[0]`
    /// (the oldest) to `received[1]` (the newest): both ends are samples.
    pub(crate) fn record(&mut self, now_ms: i64, received: [i64; 2]) {
        let start_ms = now_ms - now_ms.rem_euclid(60_000);
        while self.minutes.front().is_some_and(|m| m.start_ms <= now_ms - WINDOW_MS) {
            self.minutes.pop_front();
        }
        if self.minutes.back().is_none_or(|m| m.start_ms != start_ms) {
            self.minutes.push_back(Minute { start_ms, samples: Vec::with_capacity(8), batches: 0 });
        }
        let minute = self.minutes.back_mut().expect("pushed above");
        for at in received {
            let latency = u32::try_from((now_ms - at).max(0)).unwrap_or(u32::MAX);
            let seen = minute.batches as usize * 2 + usize::from(at == received[1]);
            if minute.samples.len() < SAMPLES_PER_MINUTE {
                minute.samples.push(latency);
            } else {
                minute.samples[seen % SAMPLES_PER_MINUTE] = latency;
            }
        }
        minute.batches += 1;
    }

    /// The figures over the hour before `now_ms`; `None` without a batch in it.
    pub(crate) fn summary(&self, now_ms: i64) -> Option<LatencySummary> {
        let recent = self.minutes.iter().filter(|m| m.start_ms > now_ms - WINDOW_MS);
        let mut samples: Vec<u32> = Vec::new();
        let mut batches = 0;
        for minute in recent {
            samples.extend_from_slice(&minute.samples);
            batches += minute.batches;
        }
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
        Some(LatencySummary { p50_ms: at(0.5), p99_ms: at(0.99), batches })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_an_hour_of_bounded_samples() {
        let mut window = LatencyWindow::default();
        let hour_start = 10 * WINDOW_MS;
        assert_eq!(window.summary(hour_start), None);
        // 100 batches a minute for an hour, each acknowledged 200..=1000 ms before delivery.
        for minute in 0..60 {
            for i in 0..100 {
                let now = hour_start + minute * 60_000 + i * 500;
                window.record(now, [now - 1000, now - 200]);
            }
        }
        let now = hour_start + 60 * 60_000 - 1;
        let summary = window.summary(now).unwrap();
        assert_eq!(summary.batches, 6000);
        assert_eq!((summary.p50_ms, summary.p99_ms), (200, 1000), "{summary:?}");
        assert!(window.minutes.iter().all(|m| m.samples.len() <= SAMPLES_PER_MINUTE));
        // An hour later, the old minutes are gone.
        window.record(now + WINDOW_MS, [now + WINDOW_MS - 50, now + WINDOW_MS - 50]);
        let later = window.summary(now + WINDOW_MS).unwrap();
        assert_eq!((later.p50_ms, later.p99_ms, later.batches), (50, 50, 1));
        assert_eq!(window.minutes.len(), 1);
        // A clock behind the sender's never gives a negative figure.
        window.record(now + WINDOW_MS, [now + WINDOW_MS + 5_000, now + WINDOW_MS + 5_000]);
        assert_eq!(window.summary(now + WINDOW_MS).unwrap().p50_ms, 0);
    }
}
