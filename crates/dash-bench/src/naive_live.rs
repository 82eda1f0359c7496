//! `dashd ceiling live`: the fan-out baseline Dash's `/live` is set against. A naive broadcast
//! server as one would first write it: one task per WebSocket, each fed from a
//! `tokio::sync::broadcast` of updates, each update serialized again for every socket. It speaks
//! the same frames as Dash (`subscribe` in; `snapshot`, then `update` with its `at`), so
//! `dashd bench-live` drives both the same way.
//!
//! What it leaves out, and Dash does: sequence numbers a client checks for gaps and catches up
//! from the database, snapshots read from the store, several pipelines per socket, bounded
//! per-client queues with a lag limit, share links and auth, the bus between nodes, and durable
//! intake (a POST here is only counted in memory).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use dash_domain::PipelineStats;
use dash_live::ServerMessage;
use tokio::sync::broadcast;

/// Updates a socket may fall behind by before it skips to the newest.
const BROADCAST_CAPACITY: usize = 64;

struct Naive {
    /// Events counted, for every pipeline alike (the benchmark follows one).
    count: AtomicI64,
    updates: broadcast::Sender<ServerMessage>,
}

/// Serves `/live` and `/webhooks/{pipeline}` on `listen`; every `flush` that counted events
/// sends one update to every socket.
pub async fn serve_naive_live(listen: SocketAddr, flush: Duration) -> anyhow::Result<()> {
    let (updates, _) = broadcast::channel(BROADCAST_CAPACITY);
    let state = Arc::new(Naive { count: AtomicI64::new(0), updates });
    let ticker = tokio::spawn(tick(state.clone(), flush));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("naive live ceiling listening on http://{}", listener.local_addr()?);
    let router =
        axum::Router::new().route("/webhooks/{pipeline}", post(count)).route("/live", get(live)).with_state(state);
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    ticker.abort();
    let _ = ticker.await;
    Ok(served?)
}

async fn count(State(state): State<Arc<Naive>>, Path(_pipeline): Path<String>, body: Bytes) -> StatusCode {
    let events = body.split(|b| *b == b'\n').filter(|line| !line.is_empty()).count();
    state.count.fetch_add(events as i64, Ordering::Relaxed);
    StatusCode::ACCEPTED
}

/// One update per flush that counted something, as Dash sends one per batch.
async fn tick(state: Arc<Naive>, flush: Duration) {
    let mut ticks = tokio::time::interval(flush);
    let (mut sent, mut seq) = (0, 0);
    loop {
        ticks.tick().await;
        let count = state.count.load(Ordering::Relaxed);
        if count == sent {
            continue;
        }
        (sent, seq) = (count, seq + 1);
        let at = dash_domain::format_ms(dash_domain::now_ms());
        let stats = PipelineStats { count, seq, duplicates: 0, last_event_at: Some(at.clone()) };
        let _ = state.updates.send(ServerMessage::Update {
            pipeline: "bench".to_owned(),
            seq,
            stats,
            at,
            views: Vec::new(),
        });
    }
}

async fn live(State(state): State<Arc<Naive>>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| follow(state, socket))
}

/// A socket's own task: the subscribe, a snapshot, then every update serialized for it alone.
async fn follow(state: Arc<Naive>, mut socket: WebSocket) {
    let pipeline = loop {
        match socket.recv().await {
            Some(Ok(Message::Text(text))) => match serde_json::from_str(&text) {
                Ok(dash_live::ClientMessage::Subscribe { pipeline, .. }) => break pipeline,
                _ => continue,
            },
            Some(Ok(_)) => continue,
            _ => return,
        }
    };
    let mut updates = state.updates.subscribe();
    let count = state.count.load(Ordering::Relaxed);
    let snapshot = ServerMessage::Snapshot {
        pipeline,
        seq: 0,
        stats: PipelineStats { count, seq: 0, duplicates: 0, last_event_at: None },
    };
    if send(&mut socket, &snapshot).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            update = updates.recv() => match update {
                Ok(update) => {
                    if send(&mut socket, &update).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(_)) => continue,
                _ => return,
            },
        }
    }
}

async fn send(socket: &mut WebSocket, message: &ServerMessage) -> Result<(), axum::Error> {
    let text = serde_json::to_string(message).expect("server messages always serialize");
    socket.send(Message::Text(text.into())).await
}
