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
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

/// How long a connection may take to send a request head once it is ready for one.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Kernel send buffer of an upgraded (WebSocket) connection; Linux doubles it.
const UPGRADED_SEND_BUFFER: usize = 32 * 1024;
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
    /// Requests handed to the router on this connection (for [`JsonErrorsIo`]).
    served: AtomicU64,
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
            served: AtomicU64::new(0),
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
            .serve_connection(
                TokioIo::new(JsonErrorsIo {
                    tcp,
                    connection: me.clone(),
                    heads: 0,
                    pending: None,
                    write_timeout: self.write_timeout,
                    stalled: None,
                }),
                service,
            )
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

/// The connection's socket, as hyper sees it. hyper answers some malformed requests itself,
/// before any request reaches the router (431 for a head past its buffer, 400 for broken framing,
/// 414): a bare status line and an empty body. Those answers are rewritten here into the
/// contract's JSON error. They are told apart from Dash's own answers by counting: every answer
/// of Dash's follows a request the router was handed, so a response head beyond that count is
/// hyper's. hyper closes the connection after such an answer.
struct JsonErrorsIo {
    tcp: TcpStream,
    connection: Arc<Connection>,
    /// Final (non-1xx) response heads written so far; `u64::MAX` once the connection is
    /// upgraded (WebSocket frames follow, never looked at).
    heads: u64,
    /// A rewritten answer not yet wholly written, and how much of it is.
    pending: Option<(Vec<u8>, usize)>,
    /// How long a write may wait for the client to take a byte.
    write_timeout: Duration,
    /// Since a write has waited: the deadline that closes the connection.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl JsonErrorsIo {
    fn poll_pending(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            let n = std::task::ready!(poll_write_deadline(
                &mut self.tcp,
                &mut self.stalled,
                self.write_timeout,
                cx,
                &bytes[*written..]
            ))?;
            if n == 0 {
                return std::task::Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        std::task::Poll::Ready(Ok(()))
    }
}

/// Writes to the socket; a write that has waited `timeout` for the client to take a byte fails
/// (`stalled` holds the deadline while it waits), and hyper closes the connection.
fn poll_write_deadline(
    tcp: &mut TcpStream,
    stalled: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
    cx: &mut std::task::Context<'_>,
    buf: &[u8],
) -> std::task::Poll<std::io::Result<usize>> {
    use std::future::Future;
    match std::pin::Pin::new(tcp).poll_write(cx, buf) {
        std::task::Poll::Ready(result) => {
            *stalled = None;
            std::task::Poll::Ready(result)
        }
        std::task::Poll::Pending => {
            let deadline = stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
            if deadline.as_mut().poll(cx).is_pending() {
                return std::task::Poll::Pending;
            }
            *stalled = None;
            metrics::counter!("dash_http_write_timeouts_total").increment(1);
            std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client took no byte for {} s", timeout.as_secs()),
            )))
        }
    }
}

/// The status of a response head hyper is writing, if `buf` starts one.
fn response_status(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ").or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()
}

/// hyper's own error answer (a 4xx whose head says its body is empty), as the contract's JSON.
/// Dash itself never sends an empty 4xx.
fn json_for_hyper_error(status: u16, buf: &[u8]) -> Option<Vec<u8>> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").map_or(buf.len(), |at| at + 2);
    let empty = buf[..head_end].windows(19).any(|w| w.eq_ignore_ascii_case(b"content-length: 0\r\n"));
    if !(400..500).contains(&status) || !empty {
        return None;
    }
    let (code, message) = match status {
        414 => ("uri_too_long", "the request target is too long"),
        431 => ("headers_too_large", "the request's headers are too large"),
        _ => ("bad_request", "the request could not be read as HTTP/1.1"),
    };
    let body = format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#);
    let reason = hyper::StatusCode::from_u16(status).ok()?.canonical_reason().unwrap_or("Error");
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    Some(answer.into_bytes())
}

impl AsyncRead for JsonErrorsIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for JsonErrorsIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        let status = match self.heads {
            u64::MAX => None,
            _ => response_status(buf).filter(|s| *s >= 200 || *s == 101),
        };
        if let Some(status) = status {
            let ours = self.heads < self.connection.served.load(Ordering::Acquire);
            if !ours && let Some(json) = json_for_hyper_error(status, buf) {
                self.heads += 1;
                // Taken whole; what the socket does not take now goes out on flush.
                self.pending = Some((json, 0));
                if let std::task::Poll::Ready(Err(err)) = self.poll_pending(cx) {
                    return std::task::Poll::Ready(Err(err));
                }
                return std::task::Poll::Ready(Ok(buf.len()));
            }
        }
        let this = &mut *self;
        let written =
            std::task::ready!(poll_write_deadline(&mut this.tcp, &mut this.stalled, this.write_timeout, cx, buf))?;
        // Counted once written (a write that waits is offered again, the same bytes).
        match status.filter(|_| written > 0) {
            Some(101) => {
                self.heads = u64::MAX;
                // A WebSocket's frames are small: a small send buffer makes a client that stops
                // reading show soon, so the hub resyncs or drops it before the kernel holds much.
                if let Err(err) = socket2::SockRef::from(&self.tcp).set_send_buffer_size(UPGRADED_SEND_BUFFER) {
                    tracing::debug!(error = %err, "SO_SNDBUF after an upgrade");
                }
            }
            Some(_) => self.heads += 1,
            None => {}
        }
        std::task::Poll::Ready(Ok(written))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_empty_4xx_answers_are_rewritten() {
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let json = String::from_utf8(json_for_hyper_error(431, hyper_431).unwrap()).unwrap();
        assert!(json.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{json}");
        assert!(
            json.ends_with(r#"{"error":{"code":"headers_too_large","message":"the request's headers are too large"}}"#)
        );
        let body_len = json.split("\r\n\r\n").nth(1).unwrap().len();
        assert!(json.contains(&format!("content-length: {body_len}\r\n")));
        assert!(json_for_hyper_error(400, b"HTTP/1.1 400 Bad Request\r\ncontent-length: 57\r\n\r\n").is_none());
        assert!(json_for_hyper_error(200, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert_eq!(response_status(b"HTTP/1.1 414 URI Too Long\r\n"), Some(414));
        assert_eq!(response_status(b"HTTP/1.0 400 Bad Request\r\n"), Some(400));
        let not_in_head = b"HTTP/1.1 404 Not Found\r\ncontent-length: 40\r\n\r\n{\"x\":\"content-length: 0\r\n\"}";
        assert!(json_for_hyper_error(404, not_in_head).is_none(), "only the head is read");
        assert_eq!(response_status(b"{\"a\":1}"), None);
    }
}
