//! The bus carries [`PipelineUpdate`]s from the buffer actors that commit batches to whoever
//! shows them (the live dashboard). The embedded default uses an in-process broadcast; nodes in
//! separate processes use NATS (`dash.pipeline.<id>.updated`).
//!
//! **Architecture invariant:** the bus is not in the durability path. Publishing never waits on
//! the broker (an update it cannot hand over at once is dropped and counted), and a lost update
//! is recovered by resyncing from the store, never by replaying the bus. [`Bus::state`] says when
//! to resync: after every reconnection.

mod nats;

use dash_domain::{NodeHeartbeat, PipelineUpdate};
use tokio::sync::{broadcast, watch};

pub use nats::NatsOptions;

/// Updates a slow subscriber may fall behind by before it is told it lagged.
const IN_PROCESS_CAPACITY: usize = 4096;
/// Subject of one pipeline's updates.
pub fn update_subject(pipeline: &str) -> String {
    format!("dash.pipeline.{pipeline}.updated")
}
/// Every pipeline's updates.
pub const ALL_UPDATES: &str = "dash.pipeline.*.updated";
/// Node heartbeats.
pub const HEARTBEAT_SUBJECT: &str = "dash.node.heartbeat";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus subscriber fell behind by {0} updates")]
    Lagged(u64),
    #[error("bus closed")]
    Closed,
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
}

/// Whether the bus is connected, and how many times it has (re)connected. A new `generation`
/// means updates may have been missed while it was away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusState {
    pub connected: bool,
    pub generation: u64,
}

#[derive(Clone)]
pub enum Bus {
    InProcess(InProcessBus),
    Nats(nats::NatsBus),
}

/// One process's bus: broadcast channels, always connected.
#[derive(Clone)]
pub struct InProcessBus {
    updates: broadcast::Sender<PipelineUpdate>,
    heartbeats: broadcast::Sender<NodeHeartbeat>,
    state: watch::Receiver<BusState>,
}

impl Bus {
    pub fn in_process() -> Self {
        let (_, state) = watch::channel(BusState { connected: true, generation: 1 });
        Self::InProcess(InProcessBus {
            updates: broadcast::channel(IN_PROCESS_CAPACITY).0,
            heartbeats: broadcast::channel(64).0,
            state,
        })
    }

    /// Connects to NATS. Returns at once even when NATS is down: the client keeps retrying in
    /// the background, and [`Bus::state`] tells when it is connected.
    pub async fn nats(options: &NatsOptions) -> Result<Self, BusError> {
        nats::NatsBus::connect(options).await.map(Self::Nats)
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::InProcess(_) => "in-process",
            Self::Nats(_) => "nats",
        }
    }

    /// Publishes after a commit. Having no subscriber, or no broker right now, is not an error.
    pub async fn publish(&self, update: PipelineUpdate) {
        match self {
            Self::InProcess(bus) => {
                let _ = bus.updates.send(update);
            }
            Self::Nats(bus) => bus.publish(update).await,
        }
    }

    /// Publishes this node's heartbeat; like updates, never waits on the broker.
    pub async fn publish_heartbeat(&self, heartbeat: &NodeHeartbeat) {
        match self {
            Self::InProcess(bus) => {
                let _ = bus.heartbeats.send(heartbeat.clone());
            }
            Self::Nats(bus) => bus.publish_heartbeat(heartbeat).await,
        }
    }

    /// Every node's heartbeats (this node's included).
    pub async fn heartbeats(&self) -> Result<Heartbeats, BusError> {
        match self {
            Self::InProcess(bus) => Ok(Heartbeats::InProcess(bus.heartbeats.subscribe())),
            Self::Nats(bus) => bus.heartbeats().await.map(Heartbeats::Nats),
        }
    }

    /// All pipelines' updates, in the order each publisher sent them.
    pub async fn subscribe(&self) -> Result<Subscription, BusError> {
        match self {
            Self::InProcess(bus) => Ok(Subscription::InProcess(bus.updates.subscribe())),
            Self::Nats(bus) => bus.subscribe().await.map(Subscription::Nats),
        }
    }

    /// Connection state; changes whenever the bus disconnects or (re)connects.
    pub fn state(&self) -> watch::Receiver<BusState> {
        match self {
            Self::InProcess(bus) => bus.state.clone(),
            Self::Nats(bus) => bus.state(),
        }
    }

    /// Whether updates are flowing; the in-process bus always is.
    pub fn is_healthy(&self) -> bool {
        self.state().borrow().connected
    }
}

pub enum Subscription {
    InProcess(broadcast::Receiver<PipelineUpdate>),
    Nats(nats::NatsSubscription),
}

impl Subscription {
    /// The next update. `Lagged` means updates were missed: the caller must resync.
    pub async fn recv(&mut self) -> Result<PipelineUpdate, BusError> {
        match self {
            Self::InProcess(rx) => rx.recv().await.map_err(|e| match e {
                broadcast::error::RecvError::Lagged(n) => BusError::Lagged(n),
                broadcast::error::RecvError::Closed => BusError::Closed,
            }),
            Self::Nats(sub) => sub.recv().await,
        }
    }
}

pub enum Heartbeats {
    InProcess(broadcast::Receiver<NodeHeartbeat>),
    Nats(nats::NatsHeartbeats),
}

impl Heartbeats {
    /// The next heartbeat; `Closed` when the bus is gone. Missed heartbeats are skipped over
    /// (the next one tells the same).
    pub async fn recv(&mut self) -> Result<NodeHeartbeat, BusError> {
        match self {
            Self::InProcess(rx) => loop {
                match rx.recv().await {
                    Ok(heartbeat) => return Ok(heartbeat),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return Err(BusError::Closed),
                }
            },
            Self::Nats(sub) => sub.recv().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use dash_domain::PipelineStats;

    use super::*;

    fn update(seq: i64) -> PipelineUpdate {
        PipelineUpdate {
            pipeline: "p".into(),
            seq,
            stats: PipelineStats::default(),
            at: String::new(),
            views: Vec::new(),
            received: None,
        }
    }

    #[tokio::test]
    async fn subscribers_see_updates_in_order_and_learn_of_lag() {
        let bus = Bus::in_process();
        let mut sub = bus.subscribe().await.unwrap();
        bus.publish(update(1)).await;
        bus.publish(update(2)).await;
        assert_eq!(sub.recv().await.unwrap().seq, 1);
        assert_eq!(sub.recv().await.unwrap().seq, 2);
        for seq in 0..(IN_PROCESS_CAPACITY as i64 + 10) {
            bus.publish(update(seq)).await;
        }
        assert!(matches!(sub.recv().await, Err(BusError::Lagged(10))));
        assert!(bus.is_healthy());
    }

    #[test]
    fn subjects_follow_the_contract() {
        assert_eq!(update_subject("orders"), "dash.pipeline.orders.updated");
    }
}
