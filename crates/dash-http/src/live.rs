//! `GET /live`: the WebSocket of the live protocol. This module only moves frames: the hub
//! (dash-live) decides what each client sees; the store gives the starting snapshot.

use dash_task::StopSignal;
use std::collections::HashSet;

use axum::body::Bytes;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use dash_boards::PanelKind;
use dash_domain::PipelineUpdate;
use dash_live::{ClientId, ClientMessage, ServerMessage};
use serde::Deserialize;

use crate::client::Client;
use crate::serve::ConnectionSlot;
use crate::throttle::Scope;
use crate::{ApiError, AppState};

/// Largest message a client may send (a subscribe is ~100 bytes).
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;
/// Socket buffers sized for many idle connections, not for bulk transfer.
const READ_BUFFER: usize = 4 * 1024;
const MAX_WRITE_BUFFER: usize = 256 * 1024;

pub(crate) fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/live", get(upgrade))
}

#[derive(Deserialize)]
struct LiveQuery {
    /// A board's share link token: the session may follow that board's pipelines only.
    share: Option<String>,
}

/// How often a session opened through a share link checks that its link still holds, and what
/// its board shows now: a revoked or expired link closes the session within this time.
const SHARE_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// What a session opened through a share link may see: the board's pipelines and, in updates,
/// the names of the board's views only.
struct ShareScope {
    token: String,
    pipelines: HashSet<String>,
    /// (pipeline id, view name).
    views: HashSet<(String, String)>,
}

impl ShareScope {
    /// The scope of the board `token` opens, as it is now. Bad tokens count against `peer`
    /// (`None`: a recheck of a session's own link, which counts nothing).
    async fn open(state: &AppState, peer: Option<std::net::IpAddr>, token: &str) -> Result<Self, ApiError> {
        let board = crate::shares::open(state, peer, token).await?;
        let mut scope = Self { token: token.to_owned(), pipelines: HashSet::new(), views: HashSet::new() };
        for panel in &board.spec.panels {
            let (reference, view) = match &panel.kind {
                PanelKind::Pipeline { pipeline } => (pipeline, None),
                PanelKind::View { pipeline, view, .. } => (pipeline, Some(view)),
                PanelKind::Note { .. } => continue,
            };
            // Panels keep pipelines by id; a board from the config file may name one by its name.
            match state.store.find_pipeline(reference).await {
                Ok(Some(record)) => {
                    if let Some(view) = view {
                        scope.views.insert((record.id.clone(), view.clone()));
                    }
                    scope.pipelines.insert(record.id);
                }
                Ok(None) => {}
                Err(err) => return Err(ApiError::store_unavailable(&err)),
            }
        }
        Ok(scope)
    }

    /// `frame` as this session may see it: an update's `views` cut to the board's own (their
    /// names are all a frame says of views the board does not show).
    fn filter(&self, frame: Bytes) -> Bytes {
        if !frame.windows(8).any(|w| w == b"\"views\":") {
            return frame;
        }
        let Ok(mut message) = serde_json::from_slice::<serde_json::Value>(&frame) else { return frame };
        let pipeline = message["pipeline"].as_str().unwrap_or_default().to_owned();
        if let Some(views) = message.get_mut("views").and_then(|v| v.as_array_mut()) {
            views.retain(|touch| {
                let view = touch["view"].as_str().unwrap_or_default();
                self.views.contains(&(pipeline.clone(), view.to_owned()))
            });
        }
        serde_json::to_vec(&message).map(Bytes::from).unwrap_or(frame)
    }
}

async fn upgrade(
    State(state): State<AppState>,
    Client(peer): Client,
    slot: Option<axum::Extension<ConnectionSlot>>,
    headers: HeaderMap,
    Query(query): Query<LiveQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // A page on another origin must not read live data through the user's browser.
    if crate::origin::is_cross_origin(&headers) {
        return Err(crate::origin::cross_origin_refused());
    }
    let scope = match (&query.share, crate::auth::authorized(&headers, &state.limits)) {
        (Some(token), false) => Some(ShareScope::open(&state, peer, token).await?),
        (_, authorized) => {
            if state.limits.admin_token.is_some() {
                state.throttle.admit(peer, Scope::Admin)?;
            }
            if !authorized {
                let refusal = ApiError::unauthorized(
                    "admin_token_required",
                    "/live needs a login session, Authorization: Bearer <admin token> or a board's share link",
                );
                return Err(state.throttle.failed(peer, Scope::Admin, refusal));
            }
            None
        }
    };
    let place = state.live_sessions.take(peer)?;
    // The connection's place under the server's cap is taken here, before the answer: hyper
    // completes the upgrade and ends the connection's task in the same poll, which would give the
    // slot back before the session could take it.
    let slot = slot.and_then(|axum::Extension(slot)| slot.take());
    Ok(ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| async move {
            // Both places stay taken while the session lasts.
            let _held = (slot, place);
            session(socket, state, scope).await
        }))
}

/// One connection: client messages in, hub frames out, until either side ends. A session
/// opened through a share link rechecks its link every [`SHARE_RECHECK`]: closed when the link
/// is revoked or expired (or its board deleted), and dropped from pipelines the board no longer
/// shows.
async fn session(mut socket: WebSocket, state: AppState, mut scope: Option<ShareScope>) {
    let (client, mut frames) = state.hub.connect().await;
    let mut recheck = tokio::time::interval(SHARE_RECHECK);
    recheck.tick().await; // the first tick is at once: the scope was just read
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let allowed = scope.as_ref().map(|s| &s.pipelines);
                    if let Some(error) = handle(&state, client, &text, allowed).await
                        && socket.send(Message::Text(error)).await.is_err()
                    {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {} // pings are answered by the library; binary is ignored
            },
            frame = frames.recv() => match frame {
                Some(bytes) => {
                    let bytes = match &scope {
                        Some(scope) => scope.filter(bytes),
                        None => bytes,
                    };
                    let Ok(text) = Utf8Bytes::try_from(bytes) else { continue };
                    if socket.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                None => break, // the hub let go of this client (too far behind, or stopping)
            },
            _ = recheck.tick(), if scope.is_some() => {
                let current = scope.as_ref().expect("checked by the guard");
                match ShareScope::open(&state, None, &current.token).await {
                    Ok(fresh) => {
                        for gone in current.pipelines.difference(&fresh.pipelines) {
                            state.hub.unsubscribe(client, gone.clone()).await;
                        }
                        scope = Some(fresh);
                    }
                    // The store away: keep what was allowed, check again next time.
                    Err(err) if err.status == axum::http::StatusCode::SERVICE_UNAVAILABLE => {}
                    Err(err) => {
                        let frame = ServerMessage::Error { code: err.code.into(), message: err.message }.to_bytes();
                        if let Ok(text) = Utf8Bytes::try_from(frame) {
                            let _ = socket.send(Message::Text(text)).await;
                        }
                        let _ = socket.send(Message::Close(None)).await;
                        break;
                    }
                }
            }
        }
    }
    state.hub.leave(client).await;
}

/// Applies one client message; returns an error frame to send back, if any.
async fn handle(
    state: &AppState,
    client: ClientId,
    text: &str,
    allowed: Option<&HashSet<String>>,
) -> Option<Utf8Bytes> {
    let error = |code: &str, message: String| {
        let frame = ServerMessage::Error { code: code.into(), message }.to_bytes();
        Utf8Bytes::try_from(frame).ok()
    };
    let message: ClientMessage = match serde_json::from_str(text) {
        Ok(message) => message,
        Err(err) => {
            return error(
                "invalid_message",
                format!("expected {{\"type\":\"subscribe\",\"pipeline\":\"…\",\"after_seq\":N}}: {err}"),
            );
        }
    };
    match message {
        // A fresh snapshot from the store: it is where a reconnecting client (`after_seq`)
        // catches up from, whatever it missed.
        ClientMessage::Subscribe { pipeline, after_seq: _ } => match state.store.find_pipeline(&pipeline).await {
            // Through a share link, only the board's pipelines; any other is refused as if it
            // did not exist (a share link's holder learns nothing of other pipelines).
            Ok(Some(record)) if allowed.is_some_and(|allowed| !allowed.contains(&record.id)) => {
                error("pipeline_not_found", format!("no pipeline {pipeline:?}"))
            }
            Ok(Some(record)) => {
                state.hub.subscribe(client, record.id, record.stats).await;
                None
            }
            Ok(None) => error("pipeline_not_found", format!("no pipeline {pipeline:?}")),
            Err(err) => {
                if let Some(held_back) = state.store_warnings.admit() {
                    tracing::warn!(error = %err, held_back, "live subscribe: store unavailable");
                }
                error("store_unavailable", "the database is not reachable right now; retry".into())
            }
        },
        ClientMessage::Unsubscribe { pipeline } => {
            state.hub.unsubscribe(client, pipeline).await;
            None
        }
    }
}

/// How often the store is compared with what clients were sent, bus or no bus trouble. Core
/// NATS may drop any message, and an update lost last shows no gap: without this a dashboard
/// could stay behind until the pipeline's next event.
const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps `/live` clients right across bus outages: tells them when figures may be stale, and
/// after every (re)connection, and every [`RECONCILE_EVERY`], reads each pipeline's stats from
/// the store for the hub, so what the bus lost reaches clients as snapshots (the hub sends them
/// only to clients that are behind). Runs until `stop` is set.
pub async fn follow_bus(state: AppState, stop: StopSignal) {
    let mut bus = state.bus.state();
    let mut synced_generation = 0;
    let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let current = *bus.borrow_and_update();
        state.hub.bus_connected(current.connected).await;
        if current.connected && current.generation != synced_generation {
            tokio::select! {
                synced = resync(&state, true) => if synced { synced_generation = current.generation },
                () = stop.cancelled() => return,
            }
        }
        let retry = tokio::time::sleep(std::time::Duration::from_secs(1));
        tokio::select! {
            changed = bus.changed() => if changed.is_err() { return },
            // A resync that failed (store down) is tried again.
            () = retry, if current.connected && current.generation != synced_generation => {}
            _ = reconcile.tick(), if current.connected => {
                tokio::select! {
                    _ = resync(&state, false) => {}
                    () = stop.cancelled() => return,
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Hands the store's figures to the hub; false when the store could not be read. `reconnected`
/// says why, for the log.
async fn resync(state: &AppState, reconnected: bool) -> bool {
    match state.store.list_pipelines().await {
        Ok(records) => {
            let at = dash_domain::format_ms(dash_domain::now_ms());
            let latest = records
                .into_iter()
                .map(|r| PipelineUpdate {
                    pipeline: r.id,
                    seq: r.stats.seq,
                    stats: r.stats,
                    at: at.clone(),
                    views: Vec::new(),
                    received: None,
                })
                .collect::<Vec<_>>();
            if reconnected {
                tracing::info!(pipelines = latest.len(), "bus (re)connected: live figures resynced from the store");
            }
            state.hub.resync(latest).await;
            true
        }
        Err(err) => {
            tracing::warn!(error = %err, reconnected, "live figures could not be read from the store; resync retried");
            false
        }
    }
}
