//! The bus carries [`PipelineUpdate`]s from the buffer actors that commit batches to whoever
//! shows them (the live dashboard). The embedded default uses an in-process broadcast; NATS
//! joins as a second variant of [`Bus`].
//!
//! **Architecture invariant:** the bus is not in the durability path. A lost update is
//! recovered by resyncing from the store, never by replaying the bus.

use dash_domain::PipelineUpdate;
use tokio::sync::broadcast;

/// Updates a slow subscriber may fall behind by before it is told it lagged.
const IN_PROCESS_CAPACITY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus subscriber fell behind by {0} updates")]
    Lagged(u64),
    #[error("bus closed")]
    Closed,
}

#[derive(Clone)]
pub enum Bus {
    InProcess(broadcast::Sender<PipelineUpdate>),
}

impl Bus {
    pub fn in_process() -> Self {
        Self::InProcess(broadcast::channel(IN_PROCESS_CAPACITY).0)
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::InProcess(_) => "in-process",
        }
    }

    /// Publishes after a commit. Having no subscriber is not an error.
    pub fn publish(&self, update: PipelineUpdate) {
        match self {
            Self::InProcess(tx) => {
                let _ = tx.send(update);
            }
        }
    }

    pub fn subscribe(&self) -> Subscription {
        match self {
            Self::InProcess(tx) => Subscription::InProcess(tx.subscribe()),
        }
    }

    /// Whether updates are flowing; the in-process bus always is.
    pub fn is_healthy(&self) -> bool {
        match self {
            Self::InProcess(_) => true,
        }
    }
}

pub enum Subscription {
    InProcess(broadcast::Receiver<PipelineUpdate>),
}

impl Subscription {
    /// The next update. `Lagged` means updates were missed: the caller must resync.
    pub async fn recv(&mut self) -> Result<PipelineUpdate, BusError> {
        match self {
            Self::InProcess(rx) => rx.recv().await.map_err(|e| match e {
                broadcast::error::RecvError::Lagged(n) => BusError::Lagged(n),
                broadcast::error::RecvError::Closed => BusError::Closed,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use dash_domain::PipelineStats;

    use super::*;

    fn update(seq: i64) -> PipelineUpdate {
        PipelineUpdate { pipeline: "p".into(), seq, stats: PipelineStats::default(), at: String::new() }
    }

    #[tokio::test]
    async fn subscribers_see_updates_in_order_and_learn_of_lag() {
        let bus = Bus::in_process();
        let mut sub = bus.subscribe();
        bus.publish(update(1));
        bus.publish(update(2));
        assert_eq!(sub.recv().await.unwrap().seq, 1);
        assert_eq!(sub.recv().await.unwrap().seq, 2);
        for seq in 0..(IN_PROCESS_CAPACITY as i64 + 10) {
            bus.publish(update(seq));
        }
        assert!(matches!(sub.recv().await, Err(BusError::Lagged(10))));
    }
}
