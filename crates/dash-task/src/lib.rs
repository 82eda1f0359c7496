//! Owned background tasks. Every long-running task Dash spawns is a [`StoppableTask`]: it gets a
//! [`StopSignal`] when spawned, and whoever holds the handle stops and joins it on shutdown, so
//! no task outlives its owner unnoticed.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Set once the owner wants the task to stop: `stop.changed()` resolves then (or when the handle
/// is dropped).
pub type StopSignal = watch::Receiver<bool>;

/// A spawned task and the means to stop it.
pub struct StoppableTask {
    handle: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl StoppableTask {
    /// Spawns `task` with the stop signal it must watch.
    pub fn spawn<F, Fut>(task: F) -> Self
    where
        F: FnOnce(StopSignal) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, signal) = watch::channel(false);
        Self { handle: tokio::spawn(task(signal)), stop }
    }

    /// Signals the task to stop and waits until it has.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_signals_and_joins() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let task = StoppableTask::spawn(|mut stop| async move {
            let _ = stop.changed().await;
            let _ = done_tx.send(());
        });
        task.shutdown().await;
        assert!(done_rx.await.is_ok(), "the task ran to its end before shutdown returned");
    }
}
