//! The HTTP/1.1 server loop: accepts connections on the listener and serves the router on each,
//! under bounds that no client can push past.
//!
//! - **Header deadline**: a connection must send a whole request head within
//!   [`HEADER_READ_TIMEOUT`] of being ready for one, whether it just connected, stalls half-way
//!   through its headers, or sits idle between keep-alive requests; then it is closed.
//! - **Connection cap**: at most `max_connections` open at once. A connection past the cap first
//!   evicts the longest-waiting connection that has no request in progress (fresh, or idle
//!   between requests), so idle sockets held by an attacker give way to new clients; when every
//!   connection is busy, the newcomer gets `503` with `Retry-After` and a JSON error, and is closed.
//! - **Per-client cap**: one client (an address; IPv6 by its /64) holds at most
//!   `max_per_client` of them; past it a newcomer gets `503`. Peers many clients come through
//!   (the operator's proxies, known web edges: `shared_peer`) are not capped this way.
//! - **Write deadline**: a connection that takes no byte of what it is sent (a response, `/live`
//!   frames) for `write_timeout` is closed, so a client that asks for a large answer and stops
//!   reading frees its slot.
//! - **Shutdown**: stops accepting, lets each connection finish its request in progress (idle ones
//!   close at once) until `drain_timeout`, then aborts the connection tasks still running (a
//!   slow answer in flight) and returns once every one has ended: nothing of a connection runs
//!   after `serve` returns, so the store can close under none.
//!
//! A WebSocket (`/live`) keeps its connection's slot for as long as the session lasts, so live
//! sessions count against the cap too; shutdown does not wait for them (the hub ends them).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::connection_io::ConnectionIo;

/// How long a connection may take to send a request head once it is ready for one.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `serve` waits for the connection tasks it aborted at the drain deadline to end.
const CUT_WAIT: Duration = Duration::from_secs(2);
/// How long a newcomer waits for an evicted connection to let go of its slot.
const EVICTION_WAIT: Duration = Duration::from_secs(5);
/// Connections over the cap being handled at once (waiting for an evicted one's slot, or being
/// refused); past it a newcomer is just closed.
const OVERFLOW_AT_ONCE: usize = 64;
/// Pause after a failed `accept` (out of file descriptors, say) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Whether connections from an address carry many clients' requests (a trusted proxy, a known
/// web edge): such a peer is not held to the per-client cap.
pub type SharedPeer = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// The bounds of [`serve`].
#[derive(Clone)]
pub struct ServeLimits {
    pub max_connections: usize,
    /// Connections one client (an address, IPv6 by /64) may hold at once.
    pub max_per_client: usize,
    /// Addresses exempt from `max_per_client`.
    pub shared_peer: SharedPeer,
    /// How long a connection may take no byte of what it is sent before it is closed.
    pub write_timeout: Duration,
    /// How long shutdown lets busy connections finish before it cuts them.
    pub drain_timeout: Duration,
}

/// Where a connection stands, for eviction.
const FRESH: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;
const UPGRADED: u8 = 3;
/// Told to close; not picked again.
const CLOSING: u8 = 4;

struct Connection {
    /// Requests handed to the router on this connection (for [`ConnectionIo`]).
    served: Arc<AtomicU64>,
    phase: AtomicU8,
    /// Milliseconds since the server started, when `phase` last changed.
    since_ms: AtomicU64,
    /// Told to close: at once when not busy (eviction, shutdown).
    close: Notify,
    /// Its task, to cut at the drain deadline (set once spawned).
    task: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl Connection {
    fn enter(&self, phase: u8, clock: &Instant) {
        self.phase.store(phase, Ordering::Release);
        self.since_ms.store(clock.elapsed().as_millis() as u64, Ordering::Release);
    }

    /// Claims an evictable connection for closing; false when it was not (or no longer) idle.
    fn claim_for_closing(&self) -> bool {
        [FRESH, IDLE]
            .into_iter()
            .any(|phase| self.phase.compare_exchange(phase, CLOSING, Ordering::AcqRel, Ordering::Acquire).is_ok())
    }
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    open: HashMap<u64, Arc<Connection>>,
}

/// Serves `router` until `shutdown` resolves, then drains the connections and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    tune: fn(&mut TcpStream),
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let server = Arc::new(Server {
        slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        overflow: Arc::new(Semaphore::new(OVERFLOW_AT_ONCE)),
        registry: Mutex::new(Registry::default()),
        emptied: Notify::new(),
        clock: Instant::now(),
        write_timeout: limits.write_timeout,
        per_client: PerClient {
            counts: crate::client_counts::ClientCounts::new(limits.max_per_client),
            shared_peer: limits.shared_peer,
        },
        router,
    });
    let mut accept_errors = 0u64;
    tokio::pin!(shutdown);
    loop {
        let (mut tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_errors += 1;
                    if accept_errors.is_power_of_two() {
                        tracing::warn!(error = %err, times = accept_errors, "accept failed; retrying");
                    }
                    metrics::counter!("dash_http_accept_errors_total").increment(1);
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        tune(&mut tcp);
        let share = match server.per_client.take(peer.ip()) {
            Ok(share) => share,
            Err(()) => {
                // One client at its share: refused without touching anyone else's slot.
                metrics::counter!("dash_http_client_connections_refused_total").increment(1);
                if let Ok(overflow) = server.overflow.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        refuse(tcp).await;
                        drop(overflow);
                    });
                }
                continue;
            }
        };
        if let Ok(slot) = server.slots.clone().try_acquire_owned() {
            server.clone().spawn_connection(tcp, peer, SlotPermit { _slot: slot, _share: share });
            continue;
        }
        // Over the cap. The loop never waits here: the newcomer is handed to a task of its own
        // (a bounded number at once; past that it is just closed).
        let Ok(overflow) = server.overflow.clone().try_acquire_owned() else { continue };
        let evicted = server.evict_one();
        let server = server.clone();
        tokio::spawn(async move {
            let slot = match evicted {
                true => tokio::time::timeout(EVICTION_WAIT, server.slots.clone().acquire_owned()).await.ok(),
                false => None,
            };
            match slot.and_then(Result::ok) {
                Some(slot) => server.spawn_connection(tcp, peer, SlotPermit { _slot: slot, _share: share }),
                None => {
                    metrics::counter!("dash_http_connections_refused_total").increment(1);
                    refuse(tcp).await;
                }
            }
            drop(overflow);
        });
    }
    // Stop: no new connections; each open one finishes its request in progress (idle ones close
    // at once) until the deadline; what is left then is cut. Upgraded `/live` sockets are not
    // waited for: the hub ends them.
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, server.closed(|c| c.close.notify_one())).await.is_err() {
        let cut = server.registry.lock().open.len();
        tracing::warn!(connections = cut, "connections still busy at the drain deadline were cut");
        // An aborted task ends at its next await; its guard then leaves the registry.
        let abort = |c: &Connection| c.task.get().into_iter().for_each(tokio::task::AbortHandle::abort);
        let _ = tokio::time::timeout(CUT_WAIT, server.closed(abort)).await;
    }
    Ok(())
}

/// What the accept loop and the connection tasks share.
struct Server {
    slots: Arc<Semaphore>,
    overflow: Arc<Semaphore>,
    registry: Mutex<Registry>,
    /// Told each time a connection leaves the registry.
    emptied: Notify,
    clock: Instant,
    write_timeout: Duration,
    per_client: PerClient,
    router: Router,
}

/// Open connections per client, and the peers exempt from it.
struct PerClient {
    counts: Arc<crate::client_counts::ClientCounts>,
    shared_peer: SharedPeer,
}

impl PerClient {
    /// A place for one more connection from `peer` (none counted for a shared peer), or `Err`
    /// once its client holds its share.
    fn take(&self, peer: IpAddr) -> Result<Option<crate::client_counts::ClientPlace>, ()> {
        if (self.shared_peer)(peer) {
            return Ok(None);
        }
        self.counts.take(peer).map(Some).ok_or(())
    }
}

/// A connection's places: under the server's cap, and in its client's share. A `/live` session
/// takes them over for as long as it lasts.
pub(crate) struct SlotPermit {
    _slot: OwnedSemaphorePermit,
    _share: Option<crate::client_counts::ClientPlace>,
}

/// A connection's place under the cap, reachable from its requests: a `/live` upgrade takes it
/// into the WebSocket session, so open sessions count against the cap until they end.
#[derive(Clone)]
pub(crate) struct ConnectionSlot(Arc<Mutex<Option<SlotPermit>>>);

impl ConnectionSlot {
    /// The slot, for a session that outlives the HTTP connection (once).
    pub(crate) fn take(&self) -> Option<SlotPermit> {
        self.0.lock().take()
    }
}

/// Removes a connection from the registry however its task ends.
struct Registered {
    server: Arc<Server>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.server.registry.lock().open.remove(&self.id);
        self.server.emptied.notify_waiters();
    }
}

impl Server {
    fn spawn_connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, slot: SlotPermit) {
        let connection = Arc::new(Connection {
            served: Arc::new(AtomicU64::new(0)),
            phase: AtomicU8::new(FRESH),
            since_ms: AtomicU64::new(self.clock.elapsed().as_millis() as u64),
            close: Notify::new(),
            task: std::sync::OnceLock::new(),
        });
        let id = {
            let mut registry = self.registry.lock();
            registry.next_id += 1;
            let id = registry.next_id;
            registry.open.insert(id, connection.clone());
            id
        };
        let slot = ConnectionSlot(Arc::new(Mutex::new(Some(slot))));
        let me = connection.clone();
        let task = tokio::spawn(async move {
            let _registered = Registered { server: self.clone(), id };
            self.serve_connection(tcp, peer, connection, slot.clone()).await;
            drop(slot.take());
        });
        let _ = me.task.set(task.abort_handle());
    }

    /// Returns once every connection has left the registry, doing `to_each` to the open ones
    /// each time one leaves (telling them to close, or cutting them).
    async fn closed(&self, to_each: impl Fn(&Connection)) {
        loop {
            let emptied = self.emptied.notified();
            {
                let registry = self.registry.lock();
                if registry.open.is_empty() {
                    return;
                }
                registry.open.values().for_each(|c| to_each(c));
            }
            emptied.await;
        }
    }

    async fn serve_connection(&self, tcp: TcpStream, peer: SocketAddr, me: Arc<Connection>, slot: ConnectionSlot) {
        let state = me.clone();
        let router = self.router.clone();
        let clock = self.clock;
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let router = router.clone();
            let state = state.clone();
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(slot.clone());
            async move {
                state.served.fetch_add(1, Ordering::AcqRel);
                state.enter(BUSY, &clock);
                // A handler that panics answers 500 and the connection goes on.
                let handled = std::panic::AssertUnwindSafe(router.oneshot(request.map(Body::new))).catch_unwind().await;
                let mut response = match handled {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(panic) => crate::error::panicked(panic),
                };
                // Every error answer is the contract's JSON, also those made outside the handlers.
                if crate::error::needs_json(&response) {
                    response = crate::error::json_errors(response).await;
                }
                if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                    state.enter(UPGRADED, &clock);
                    return Ok::<_, Infallible>(response);
                }
                // Idle once the whole body is written, not when the handler returns.
                Ok(response.map(|body| Body::new(IdleWhenDone { body, connection: Some(state), clock })))
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(ConnectionIo::new(tcp, me.served.clone(), self.write_timeout)), service)
            .with_upgrades();
        tokio::pin!(connection);
        let mut closing = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, %peer, "connection ended with an error");
                    }
                    return;
                }
                () = me.close.notified(), if !closing => {
                    // Never served (silent, or a half-sent head): dropped at once. Served before:
                    // closed gracefully, so the tail of its last answer still reaches the client.
                    let idle = me.phase.load(Ordering::Acquire) == CLOSING || me.claim_for_closing();
                    if idle && me.served.load(Ordering::Acquire) == 0 {
                        return;
                    }
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }

    /// Tells the connection that has waited longest without a request in progress to close.
    /// False when every connection is busy (none idle, none already closing).
    ///
    /// One pass over the registry finds the oldest idle connection (no sort, no allocation under
    /// the lock); a request may begin on it between the look and the claim, so a few more passes
    /// are allowed before giving up on this accept.
    fn evict_one(&self) -> bool {
        const PASSES: usize = 4;
        let registry = self.registry.lock();
        let mut closing = false;
        for _ in 0..PASSES {
            let mut oldest: Option<(&Arc<Connection>, u64)> = None;
            for connection in registry.open.values() {
                match connection.phase.load(Ordering::Acquire) {
                    CLOSING => closing = true,
                    FRESH | IDLE => {
                        let since = connection.since_ms.load(Ordering::Acquire);
                        if oldest.is_none_or(|(_, s)| since < s) {
                            oldest = Some((connection, since));
                        }
                    }
                    _ => {}
                }
            }
            let Some((connection, _)) = oldest else { break };
            if connection.claim_for_closing() {
                metrics::counter!("dash_http_connections_evicted_total").increment(1);
                connection.close.notify_one();
                return true;
            }
        }
        // One told to close earlier is still on its way out: its slot is coming.
        closing
    }
}

/// A response body that marks its connection idle once it has been written out (or dropped).
struct IdleWhenDone {
    body: Body,
    connection: Option<Arc<Connection>>,
    clock: Instant,
}

impl IdleWhenDone {
    fn done(&mut self) {
        if let Some(connection) = self.connection.take() {
            connection.enter(IDLE, &self.clock);
        }
    }
}

impl hyper::body::Body for IdleWhenDone {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = hyper::body::Body::poll_frame(std::pin::Pin::new(&mut self.body), cx);
        if matches!(polled, std::task::Poll::Ready(None) | std::task::Poll::Ready(Some(Err(_)))) {
            self.done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.body)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::Body::size_hint(&self.body)
    }
}

impl Drop for IdleWhenDone {
    fn drop(&mut self) {
        self.done();
    }
}

/// Answers a connection over the cap with 503 and closes it, within a second.
async fn refuse(mut tcp: TcpStream) {
    use tokio::io::AsyncReadExt;
    // Read what the client sent first, so that closing does not reset the connection before
    // the answer is read.
    let mut head = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut head)).await;
    let body = r#"{"error":{"code":"too_many_connections","message":"this node has as many connections open as it allows; retry shortly"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}
