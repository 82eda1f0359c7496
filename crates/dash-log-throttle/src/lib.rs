//! Repeated warnings summarised instead of repeated.
//!
//! During an outage the same warning can fire thousands of times a minute (one per forward to a
//! dead peer, one per poll of a queue whose database is gone). The metrics count every one;
//! the log needs one line now and then, saying how many were held back. Two tools:
//!
//! - [`LogThrottle`], for Dash's own call sites: `admit()` says whether this occurrence is
//!   logged, and with it how many were held back since the last one logged;
//! - [`TargetThrottle`], a [`tracing_subscriber::Layer`] for libraries that log on their own
//!   (apalis): warnings and errors from the given targets pass once per period per target, and
//!   [`TargetThrottle::summarise`] logs what was held back.
//!
//! Rate limiting is [`governor`]'s; this crate only counts what it holds back.

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dash_task::StopSignal;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// The period Dash summarises repeated warnings over.
pub const PERIOD: Duration = Duration::from_secs(30);

/// One line per period for one call site.
pub struct LogThrottle {
    limiter: DefaultDirectRateLimiter,
    held_back: AtomicU64,
}

impl LogThrottle {
    /// Lets one occurrence through per `period` (the first at once).
    pub fn every(period: Duration) -> Self {
        let quota = Quota::with_period(period.max(Duration::from_millis(1))).expect("a period above zero");
        Self { limiter: RateLimiter::direct(quota), held_back: AtomicU64::new(0) }
    }

    /// One line per [`PERIOD`].
    pub fn per_period() -> Self {
        Self::every(PERIOD)
    }

    /// `Some(held back since the last one logged)` when this occurrence is to be logged.
    pub fn admit(&self) -> Option<u64> {
        match self.limiter.check() {
            Ok(()) => Some(self.held_back.swap(0, Ordering::AcqRel)),
            Err(_) => {
                self.held_back.fetch_add(1, Ordering::AcqRel);
                None
            }
        }
    }
}

/// A layer that lets warnings and errors of noisy library targets through once per period.
pub struct TargetThrottle {
    period: Duration,
    /// (target prefix, its throttle); few, so a list.
    targets: Vec<(&'static str, LogThrottle)>,
    /// Held back per target prefix since the last summary.
    unreported: Mutex<Vec<u64>>,
}

impl TargetThrottle {
    pub fn new(prefixes: &[&'static str], period: Duration) -> Self {
        Self {
            period,
            targets: prefixes.iter().map(|p| (*p, LogThrottle::every(period))).collect(),
            unreported: Mutex::new(vec![0; prefixes.len()]),
        }
    }

    /// Whether an event of `target` at `level` is logged (counting it if not).
    pub fn admit(&self, target: &str, level: Level) -> bool {
        if level > Level::WARN {
            return true;
        }
        let Some(index) = self.targets.iter().position(|(prefix, _)| target.starts_with(prefix)) else {
            return true;
        };
        if self.targets[index].1.admit().is_some() {
            return true;
        }
        self.unreported.lock()[index] += 1;
        false
    }

    /// What was held back since the last call, by target prefix, and starts counting afresh.
    pub fn take_held_back(&self) -> Vec<(&'static str, u64)> {
        let mut unreported = self.unreported.lock();
        self.targets
            .iter()
            .zip(unreported.iter_mut())
            .filter(|(_, count)| **count > 0)
            .map(|((prefix, _), count)| (*prefix, std::mem::take(count)))
            .collect()
    }

    /// Logs, once per period, how many messages of each target were held back; ends when
    /// `stop` says so.
    pub async fn summarise(&self, stop: StopSignal) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.period) => {}
                () = stop.cancelled() => return,
            }
            for (target, held_back) in self.take_held_back() {
                tracing::warn!(
                    target: "dash_log_throttle",
                    library = target,
                    held_back,
                    period_secs = self.period.as_secs(),
                    "repeated library warnings held back (the first of each period is logged)"
                );
            }
        }
    }
}

/// The layer holding a shared [`TargetThrottle`] (the summary task holds the other handle).
pub struct TargetThrottleLayer(pub Arc<TargetThrottle>);

impl<S: Subscriber> Layer<S> for TargetThrottleLayer {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let metadata = event.metadata();
        self.0.admit(metadata.target(), *metadata.level())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_period_with_the_count_held_back() {
        let throttle = LogThrottle::every(Duration::from_secs(3600));
        assert_eq!(throttle.admit(), Some(0));
        for _ in 0..5 {
            assert_eq!(throttle.admit(), None);
        }
        let quick = LogThrottle::every(Duration::from_millis(20));
        assert_eq!(quick.admit(), Some(0));
        assert_eq!(quick.admit(), None);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(quick.admit(), Some(1));
    }

    #[test]
    fn only_warnings_of_the_named_targets_are_held_back() {
        let throttle = TargetThrottle::new(&["apalis"], Duration::from_secs(3600));
        assert!(throttle.admit("apalis_core::worker", Level::ERROR));
        assert!(!throttle.admit("apalis_core::worker", Level::ERROR));
        assert!(!throttle.admit("apalis_sql", Level::WARN));
        assert!(throttle.admit("apalis_core::worker", Level::INFO));
        assert!(throttle.admit("dash_ingest", Level::ERROR));
        assert_eq!(throttle.take_held_back(), vec![("apalis", 2)]);
        assert_eq!(throttle.take_held_back(), vec![]);
    }
}
