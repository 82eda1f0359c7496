//! Restarts an actor that panicked, with backoff; returns when it ends normally.

use std::future::Future;
use std::time::{Duration, Instant};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// An actor that ran this long before failing starts again from the first backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Runs `start()` in a task; on panic, logs, counts, waits, and runs it again. Each start
/// builds the actor afresh from state that survives it (for buffer actors: the log checkpoint).
pub async fn supervise<F, Fut>(name: String, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let backoffs = || {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::new()
            .with_min_delay(FIRST_BACKOFF)
            .with_max_delay(MAX_BACKOFF)
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = backoffs();
    loop {
        let started = Instant::now();
        match tokio::spawn(start()).await {
            Ok(()) => return,
            Err(err) if err.is_panic() => {
                if started.elapsed() > STABLE_AFTER {
                    delays = backoffs();
                }
                let backoff = delays.next().unwrap_or(MAX_BACKOFF);
                metrics::counter!("dash_actor_restarts_total", "actor" => name.clone()).increment(1);
                tracing::error!(actor = %name, retry_in_ms = backoff.as_millis() as u64, "actor panicked; restarting");
                tokio::time::sleep(backoff).await;
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_actor_is_restarted_until_it_finishes() {
        let starts = Arc::new(AtomicUsize::new(0));
        let counter = starts.clone();
        supervise("test".into(), move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    panic!("injected failure {n}");
                }
            }
        })
        .await;
        assert_eq!(starts.load(Ordering::SeqCst), 4);
    }
}
