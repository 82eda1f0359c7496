//! The NATS bus: core NATS publish/subscribe (no JetStream: nothing here needs to be durable).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectOptions, Event};
use dash_domain::{NodeHeartbeat, PipelineUpdate};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::{ALL_UPDATES, BusError, BusState, HEARTBEAT_SUBJECT, update_subject};

/// Longest a publish may wait for room in the client's outgoing queue. Past it the update is
/// dropped: the buffer actor that publishes must never stall on the broker.
const PUBLISH_WAIT: Duration = Duration::from_millis(20);
/// Reconnect backoff: 100 ms doubling to 1 s. With [`CONNECT_TIMEOUT`] this bounds how long a
/// node stays off the bus after the network heals: an attempt under way when it heals ends
/// within the timeout, and the next starts at most this much later.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Each connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The client pings the server after this long without hearing from it, and drops the connection
/// when two pings go unanswered (about three intervals of silence). A partition drops packets
/// without telling either side, so without this a connection would wait out TCP's own
/// retransmission backoff (minutes to give up, and seconds to resume after the heal) while the
/// node's heartbeats queued behind it.
const PING_INTERVAL: Duration = Duration::from_secs(1);

/// How to reach NATS. Credentials may also be in the URL (`nats://user:pass@host:4222`).
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// One URL or several, comma-separated.
    pub url: String,
    /// Client name the server shows (this node's id).
    pub name: String,
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// A `.creds` file (JWT + nkey seed).
    pub creds_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for the server's TLS certificate.
    pub tls_ca: Option<PathBuf>,
    pub require_tls: bool,
}

#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    state: watch::Receiver<BusState>,
}

impl NatsBus {
    pub(crate) async fn connect(options: &NatsOptions) -> Result<Self, BusError> {
        let (state_tx, state) = watch::channel(BusState::default());
        let state_tx = Arc::new(state_tx);
        let mut connect = ConnectOptions::new()
            .name(&options.name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(CONNECT_TIMEOUT)
            .ping_interval(PING_INTERVAL)
            .reconnect_delay_callback(|attempts| {
                let exponent = attempts.min(6) as u32;
                (Duration::from_millis(100) * 2u32.pow(exponent)).min(MAX_RECONNECT_DELAY)
            })
            .event_callback(move |event| {
                let state_tx = state_tx.clone();
                async move {
                    match event {
                        Event::Connected => {
                            tracing::info!("bus: connected to NATS");
                            state_tx.send_modify(|s| {
                                s.connected = true;
                                s.generation += 1;
                            });
                        }
                        Event::Disconnected => {
                            tracing::warn!("bus: disconnected from NATS; retrying");
                            state_tx.send_modify(|s| s.connected = false);
                        }
                        other => tracing::info!(event = %other, "bus: NATS event"),
                    }
                }
            })
            .require_tls(options.require_tls);
        if let Some(token) = &options.token {
            connect = connect.token(token.clone());
        }
        if let (Some(user), Some(password)) = (&options.user, &options.password) {
            connect = connect.user_and_password(user.clone(), password.clone());
        }
        if let Some(path) = &options.creds_file {
            connect = connect
                .credentials_file(path)
                .await
                .map_err(|e| BusError::Connect(format!("credentials file {}: {e}", path.display())))?;
        }
        if let Some(path) = &options.tls_ca {
            connect = connect.add_root_certificates(path.clone());
        }
        let client = connect.connect(options.url.as_str()).await.map_err(|e| BusError::Connect(e.to_string()))?;
        Ok(Self { client, state })
    }

    pub(crate) async fn publish(&self, update: PipelineUpdate) {
        self.send(update_subject(&update.pipeline), &update).await;
    }

    pub(crate) async fn publish_heartbeat(&self, heartbeat: &NodeHeartbeat) {
        self.send(HEARTBEAT_SUBJECT.to_owned(), heartbeat).await;
    }

    /// Publishes unless the broker is away or the client's queue stays full for
    /// [`PUBLISH_WAIT`]; then the message is dropped and counted.
    async fn send(&self, subject: String, message: &impl serde::Serialize) {
        if !self.state.borrow().connected {
            // Web nodes resync from the store when the bus is back; queueing would only
            // replay stale figures.
            metrics::counter!("dash_bus_publish_dropped_total").increment(1);
            return;
        }
        let payload = match serde_json::to_vec(message) {
            Ok(payload) => payload,
            Err(err) => {
                tracing::error!(error = %err, "bus: cannot encode a message");
                return;
            }
        };
        match tokio::time::timeout(PUBLISH_WAIT, self.client.publish(subject, payload.into())).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                metrics::counter!("dash_bus_publish_dropped_total").increment(1);
                tracing::debug!(error = %err, "bus: publish failed");
            }
            Err(_) => {
                metrics::counter!("dash_bus_publish_dropped_total").increment(1);
                tracing::debug!("bus: publish queue full; message dropped");
            }
        }
    }

    pub(crate) async fn subscribe(&self) -> Result<NatsSubscription, BusError> {
        let subscriber =
            self.client.subscribe(ALL_UPDATES).await.map_err(|e| BusError::Connect(format!("subscribe: {e}")))?;
        Ok(NatsSubscription { subscriber })
    }

    pub(crate) async fn heartbeats(&self) -> Result<NatsHeartbeats, BusError> {
        let subscriber =
            self.client.subscribe(HEARTBEAT_SUBJECT).await.map_err(|e| BusError::Connect(format!("subscribe: {e}")))?;
        Ok(NatsHeartbeats { subscriber })
    }

    pub(crate) fn state(&self) -> watch::Receiver<BusState> {
        self.state.clone()
    }
}

/// Updates from every ingestor. The client re-subscribes by itself after a reconnection.
pub struct NatsSubscription {
    subscriber: async_nats::Subscriber,
}

impl NatsSubscription {
    pub(crate) async fn recv(&mut self) -> Result<PipelineUpdate, BusError> {
        next_message(&mut self.subscriber).await
    }
}

/// Heartbeats of every node.
pub struct NatsHeartbeats {
    subscriber: async_nats::Subscriber,
}

impl NatsHeartbeats {
    pub(crate) async fn recv(&mut self) -> Result<NodeHeartbeat, BusError> {
        next_message(&mut self.subscriber).await
    }
}

/// The next message that decodes as `T`; others are counted and skipped.
async fn next_message<T: DeserializeOwned>(subscriber: &mut async_nats::Subscriber) -> Result<T, BusError> {
    loop {
        let message = subscriber.next().await.ok_or(BusError::Closed)?;
        match serde_json::from_slice(&message.payload) {
            Ok(decoded) => return Ok(decoded),
            Err(err) => {
                metrics::counter!("dash_bus_bad_messages_total").increment(1);
                tracing::warn!(subject = %message.subject, error = %err, "bus: malformed message ignored");
            }
        }
    }
}
