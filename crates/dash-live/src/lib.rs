//! The live fan-out: one [`Hub`] task reads pipeline updates from the bus and hands each
//! subscriber the frames of the `/live` protocol, in `seq` order, without gaps.
//!
//! - Each update is serialized once; subscribers share the bytes.
//! - Every subscriber has a bounded queue fed with `try_send`: a slow client never slows the
//!   hub or the other clients. A client whose queue is full misses updates; as soon as there is
//!   room it gets a fresh `snapshot` instead (continuity cannot be proved, so no gap is shown).
//!   One that stays full for [`MAX_LAG`] is dropped.
//! - Every subscriber remembers the last `seq` it was sent per pipeline. An update that does not
//!   follow it (a bus message lost, the bus lagging) is sent as a `snapshot`: updates carry full
//!   stats, so a snapshot needs no database read.
//!
//! **Architecture invariant:** the hub knows no HTTP or WebSocket type; frames are JSON text in
//! [`Bytes`], and the transport (dash-http) only moves them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dash_bus::{Bus, BusError};
use dash_domain::{PipelineStats, PipelineUpdate};
use dash_task::{StopSignal, StoppableTask};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

mod latency;

pub use latency::LatencySummary;

/// Frames a client may have queued before it counts as lagging.
pub const CLIENT_QUEUE: usize = 64;
/// A client lagging this long is disconnected.
pub const MAX_LAG: Duration = Duration::from_secs(30);
/// Pipelines one client may follow.
pub const MAX_SUBSCRIPTIONS: usize = 256;
/// Hub commands waiting (subscribe / leave); senders wait beyond it.
const COMMAND_QUEUE: usize = 1024;

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Subscribe {
        pipeline: String,
        #[serde(default)]
        after_seq: Option<i64>,
    },
    Unsubscribe {
        pipeline: String,
    },
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Snapshot {
        pipeline: String,
        seq: i64,
        stats: PipelineStats,
    },
    /// `at`: the batch's commit time (RFC 3339), so clients can see how fresh it is.
    Update {
        pipeline: String,
        seq: i64,
        stats: PipelineStats,
        at: String,
        /// The views the batch changed (which minutes of each): a page redraws those.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        views: Vec<dash_domain::ViewTouch>,
    },
    Error {
        code: String,
        message: String,
    },
    /// `stale`: the node lost the bus, figures may be behind until it is back; `live`: back.
    Status {
        state: String,
    },
}

impl ServerMessage {
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("server messages always serialize"))
    }
}

pub type ClientId = u64;

enum Command {
    Join { client: ClientId, tx: mpsc::Sender<Bytes> },
    Subscribe { client: ClientId, pipeline: String, snapshot: PipelineStats },
    Unsubscribe { client: ClientId, pipeline: String },
    Leave { client: ClientId },
    BusConnected(bool),
    Resync(Vec<PipelineUpdate>),
    Latency { pipeline: String, reply: oneshot::Sender<Option<LatencySummary>> },
}

/// Handle to the hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    commands: mpsc::Sender<Command>,
    next_client: Arc<AtomicU64>,
    /// Clients connected and not yet gone.
    clients: Arc<AtomicU64>,
}

/// The hub task's handle; join it on shutdown.
pub type HubTask = StoppableTask;

impl Hub {
    /// Starts the hub task on `bus`.
    pub async fn start(bus: &Bus) -> Result<(Hub, HubTask), BusError> {
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let subscription = bus.subscribe().await?;
        let task = StoppableTask::spawn(|stop| run(subscription, rx, stop));
        Ok((Hub { commands, next_client: Arc::new(AtomicU64::new(1)), clients: Arc::default() }, task))
    }

    /// Tells every client whether figures are live (`true`) or may be stale (the bus is away).
    pub async fn bus_connected(&self, connected: bool) {
        let _ = self.commands.send(Command::BusConnected(connected)).await;
    }

    /// Figures read from the store after the bus may have lost updates: each client that is
    /// behind gets a snapshot (or the update, if it is exactly the next one).
    pub async fn resync(&self, latest: Vec<PipelineUpdate>) {
        let _ = self.commands.send(Command::Resync(latest)).await;
    }

    /// p50 and p99 of the time from an event's acknowledgement to its update leaving this node
    /// for the browsers, over the last hour; `None` when no batch came in that hour (or the hub
    /// is gone).
    pub async fn latency(&self, pipeline: &str) -> Option<LatencySummary> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Latency { pipeline: pipeline.to_owned(), reply }).await.ok()?;
        answer.await.ok().flatten()
    }

    /// A new client: its id and the queue its frames arrive on. The queue ends when the hub
    /// drops the client (it lagged for too long) or stops.
    pub async fn connect(&self) -> (ClientId, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let client = self.next_client.fetch_add(1, Ordering::Relaxed);
        self.clients.fetch_add(1, Ordering::Relaxed);
        let _ = self.commands.send(Command::Join { client, tx }).await;
        (client, rx)
    }

    /// Follows `pipeline`, starting from `snapshot` (read from the store by the caller). The hub
    /// sends the snapshot itself, or a newer one if it has seen newer updates, then the updates.
    pub async fn subscribe(&self, client: ClientId, pipeline: String, snapshot: PipelineStats) {
        let _ = self.commands.send(Command::Subscribe { client, pipeline, snapshot }).await;
    }

    pub async fn unsubscribe(&self, client: ClientId, pipeline: String) {
        let _ = self.commands.send(Command::Unsubscribe { client, pipeline }).await;
    }

    /// The client is gone (each connected client leaves once, whoever ended it).
    pub async fn leave(&self, client: ClientId) {
        let _ = self.clients.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
        let _ = self.commands.send(Command::Leave { client }).await;
    }

    /// Clients connected now (the `/live` sockets open on this node).
    pub fn clients(&self) -> u64 {
        self.clients.load(Ordering::Relaxed)
    }
}

struct Subscriber {
    tx: mpsc::Sender<Bytes>,
    /// Last seq sent to this client for this pipeline.
    last_seq: i64,
    /// Since when this client's queue has been full (it missed updates).
    lagging_since: Option<Instant>,
}

#[derive(Default)]
struct PipelineFeed {
    subscribers: HashMap<ClientId, Subscriber>,
    /// The newest stats the hub has seen (from the bus), to start new subscribers from.
    latest: Option<PipelineStats>,
    /// Acknowledgement to delivery, over the last hour.
    latency: latency::LatencyWindow,
}

struct Client {
    /// The only long-lived sender of the client's queue besides its subscriptions' clones:
    /// removing the client everywhere closes the queue and so the connection.
    tx: mpsc::Sender<Bytes>,
    /// Pipelines it follows.
    following: Vec<String>,
}

struct HubState {
    feeds: HashMap<String, PipelineFeed>,
    clients: HashMap<ClientId, Client>,
    bus_connected: bool,
}

impl Default for HubState {
    fn default() -> Self {
        Self { feeds: HashMap::new(), clients: HashMap::new(), bus_connected: true }
    }
}

fn status_frame(connected: bool) -> Bytes {
    ServerMessage::Status { state: if connected { "live" } else { "stale" }.into() }.to_bytes()
}

async fn run(mut bus: dash_bus::Subscription, mut commands: mpsc::Receiver<Command>, stop: StopSignal) {
    let mut state = HubState::default();
    loop {
        tokio::select! {
            update = bus.recv() => match update {
                Ok(update) => state.publish(update),
                Err(BusError::Lagged(missed)) => {
                    // Updates were lost: the next update per pipeline will not follow what each
                    // client has, and will be sent as a snapshot. Nothing else to do here.
                    metrics::counter!("dash_live_bus_lagged_total").increment(missed);
                    tracing::warn!(missed, "live hub fell behind the bus; clients will get snapshots");
                }
                Err(BusError::Closed | BusError::Connect(_)) => return,
            },
            command = commands.recv() => match command {
                Some(command) => state.apply(command),
                None => return,
            },
            () = stop.cancelled() => return,
        }
    }
}

impl HubState {
    fn apply(&mut self, command: Command) {
        match command {
            Command::Join { client, tx } => {
                if !self.bus_connected {
                    let _ = tx.try_send(status_frame(false));
                }
                self.clients.insert(client, Client { tx, following: Vec::new() });
            }
            Command::BusConnected(connected) => {
                if connected != self.bus_connected {
                    self.bus_connected = connected;
                    let frame = status_frame(connected);
                    for client in self.clients.values() {
                        let _ = client.tx.try_send(frame.clone());
                    }
                }
            }
            Command::Resync(latest) => {
                for update in latest {
                    self.publish(update);
                }
            }
            Command::Latency { pipeline, reply } => {
                let summary = self.feeds.get(&pipeline).and_then(|f| f.latency.summary(dash_domain::now_ms()));
                let _ = reply.send(summary);
            }
            Command::Subscribe { client, pipeline, snapshot } => {
                let Some(entry) = self.clients.get_mut(&client) else { return };
                if !entry.following.contains(&pipeline) {
                    if entry.following.len() >= MAX_SUBSCRIPTIONS {
                        let _ = entry.tx.try_send(
                            ServerMessage::Error {
                                code: "too_many_subscriptions".into(),
                                message: format!("at most {MAX_SUBSCRIPTIONS} pipelines per connection"),
                            }
                            .to_bytes(),
                        );
                        return;
                    }
                    entry.following.push(pipeline.clone());
                }
                let tx = entry.tx.clone();
                let feed = self.feeds.entry(pipeline.clone()).or_default();
                // Start from whichever is newer: the store's view or the last update seen.
                let start = match &feed.latest {
                    Some(latest) if latest.seq > snapshot.seq => latest.clone(),
                    _ => snapshot,
                };
                let frame = ServerMessage::Snapshot { pipeline, seq: start.seq, stats: start.clone() }.to_bytes();
                let lagging_since = tx.try_send(frame).is_err().then(Instant::now);
                feed.subscribers.insert(client, Subscriber { tx, last_seq: start.seq, lagging_since });
            }
            Command::Unsubscribe { client, pipeline } => {
                if let Some(feed) = self.feeds.get_mut(&pipeline) {
                    feed.subscribers.remove(&client);
                }
                if let Some(entry) = self.clients.get_mut(&client) {
                    entry.following.retain(|p| *p != pipeline);
                }
            }
            Command::Leave { client } => self.remove(client),
        }
    }

    /// Forgets a client everywhere; its queue closes once the last sender is gone.
    fn remove(&mut self, client: ClientId) {
        for pipeline in self.clients.remove(&client).map(|c| c.following).unwrap_or_default() {
            if let Some(feed) = self.feeds.get_mut(&pipeline) {
                feed.subscribers.remove(&client);
            }
        }
    }

    fn publish(&mut self, update: PipelineUpdate) {
        let feed = self.feeds.entry(update.pipeline.clone()).or_default();
        if feed.latest.as_ref().is_some_and(|l| l.seq >= update.seq) {
            return; // an old or repeated update (e.g. redelivered by a bus)
        }
        feed.latest = Some(update.stats.clone());
        if let Some(received) = update.received {
            feed.latency.record(dash_domain::now_ms(), received);
        }
        if feed.subscribers.is_empty() {
            return;
        }
        let mut as_update: Option<Bytes> = None;
        let mut as_snapshot: Option<Bytes> = None;
        let mut dropped = Vec::new();
        for (client, sub) in &mut feed.subscribers {
            if update.seq <= sub.last_seq {
                continue;
            }
            let continuous = update.seq == sub.last_seq + 1 && sub.lagging_since.is_none();
            let frame = if continuous {
                as_update.get_or_insert_with(|| {
                    ServerMessage::Update {
                        pipeline: update.pipeline.clone(),
                        seq: update.seq,
                        stats: update.stats.clone(),
                        at: update.at.clone(),
                        views: update.views.clone(),
                    }
                    .to_bytes()
                })
            } else {
                as_snapshot.get_or_insert_with(|| {
                    ServerMessage::Snapshot {
                        pipeline: update.pipeline.clone(),
                        seq: update.seq,
                        stats: update.stats.clone(),
                    }
                    .to_bytes()
                })
            };
            match sub.tx.try_send(frame.clone()) {
                Ok(()) => {
                    sub.last_seq = update.seq;
                    sub.lagging_since = None;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let since = *sub.lagging_since.get_or_insert_with(Instant::now);
                    metrics::counter!("dash_live_frames_dropped_total").increment(1);
                    if since.elapsed() > MAX_LAG {
                        dropped.push(*client);
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => dropped.push(*client),
            }
        }
        for client in dropped {
            tracing::info!(client, "live client too far behind (or gone); disconnecting it");
            self.remove(client);
        }
    }
}

#[cfg(test)]
mod tests;
