//! Owned background tasks. Every long-running task Dash spawns is a [`StoppableTask`]: it gets a
//! [`StopSignal`] when spawned, and whoever holds the handle stops and joins it on shutdown, so
//! no task outlives its owner unnoticed.
//!
//! Built on tokio-util: the signal is a [`CancellationToken`] (`stop.cancelled().await`,
//! `stop.is_cancelled()`), and the task runs on a [`TaskTracker`], which the owner closes and waits
//! for. Dropping the handle without [`StoppableTask::shutdown`] still signals the task.

use std::future::Future;

use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// Cancelled once the owner wants the task to stop.
pub type StopSignal = CancellationToken;

/// A spawned task and the means to stop it.
pub struct StoppableTask {
    tracker: TaskTracker,
    /// Cancels the task's signal when the handle goes, whether or not it was shut down.
    stop: DropGuard,
}

impl StoppableTask {
    /// Spawns `task` with the stop signal it must watch.
    pub fn spawn<F, Fut>(task: F) -> Self
    where
        F: FnOnce(StopSignal) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(task(token.clone()));
        tracker.close();
        Self { tracker, stop: token.drop_guard() }
    }

    /// Signals the task to stop and waits until it has.
    pub async fn shutdown(self) {
        let Self { tracker, stop } = self;
        drop(stop);
        tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_signals_and_joins() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let task = StoppableTask::spawn(|stop| async move {
            stop.cancelled().await;
            let _ = done_tx.send(());
        });
        task.shutdown().await;
        assert!(done_rx.await.is_ok(), "the task ran to its end before shutdown returned");
    }

    #[tokio::test]
    async fn a_dropped_handle_still_stops_its_task() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let task = StoppableTask::spawn(|stop| async move {
            stop.cancelled().await;
            let _ = done_tx.send(());
        });
        drop(task);
        assert!(done_rx.await.is_ok());
    }
}
