//! One connection's socket as hyper sees it: the write deadline, the send buffer of an upgraded
//! connection, and hyper's own error answers in the contract's JSON.
//!
//! **Why the bytes are looked at.** hyper answers some malformed requests itself, before any
//! request reaches the router: 431 for a head past its buffer, 414, 400 for broken framing. It
//! writes a bare status line with an empty body and closes the connection, and hyper 1.x offers no
//! hook to change that answer (no error-response callback on its HTTP/1 connection builder, and
//! the router never sees the request). The contract says every error is JSON, so those answers
//! are rewritten here, on their way to the socket.
//!
//! **How an answer is known to be hyper's.** By counting, not by content alone: every answer of
//! Dash's follows a request the router was handed (`served`), so a response head written beyond
//! that count is hyper's. A write is taken for a head only when it starts with `HTTP/1.x NNN`
//! (hyper writes a head at the start of a write buffer), and it is rewritten only when the write is
//! that head and nothing more, a 4xx saying its body is empty, which Dash itself never sends. So a
//! body that happens to hold such text (a CSV cell, a note) is never taken for one: a body write
//! never ends exactly where a head would. A head hyper splits across writes (it does not today) is
//! not recognised and goes out as hyper wrote it: the answer is then hyper's plain one, never a
//! corrupted one. Once the connection is upgraded (101), nothing written is looked at again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Kernel send buffer of an upgraded (WebSocket) connection; Linux doubles it.
const UPGRADED_SEND_BUFFER: usize = 32 * 1024;

/// The connection's socket, as hyper sees it.
pub(crate) struct ConnectionIo {
    tcp: TcpStream,
    /// Requests the router was handed on this connection (counted by the server loop).
    served: Arc<AtomicU64>,
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

impl ConnectionIo {
    pub(crate) fn new(tcp: TcpStream, served: Arc<AtomicU64>, write_timeout: Duration) -> Self {
        Self { tcp, served, heads: 0, pending: None, write_timeout, stalled: None }
    }

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
    // hyper hands its own answer over as one buffer that is the whole head and nothing more: a
    // write holding anything past the head (a body) is not one.
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 2)?;
    if head_end + 2 != buf.len() {
        return None;
    }
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

impl AsyncRead for ConnectionIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnectionIo {
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
            let ours = self.heads < self.served.load(Ordering::Acquire);
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A connection's socket over loopback, and the client's end of it.
    async fn pair(served: u64) -> (ConnectionIo, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (ConnectionIo::new(server, Arc::new(AtomicU64::new(served)), Duration::from_secs(5)), client)
    }

    async fn written(mut io: ConnectionIo, mut client: TcpStream, writes: &[&[u8]]) -> String {
        for write in writes {
            io.write_all(write).await.unwrap();
        }
        io.shutdown().await.unwrap();
        let mut text = String::new();
        client.read_to_string(&mut text).await.unwrap();
        text
    }

    #[tokio::test]
    async fn hypers_answer_before_any_request_goes_out_as_json() {
        let (io, client) = pair(0).await;
        let text =
            written(io, client, &[b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n"]).await;
        assert!(text.starts_with("HTTP/1.1 431 ") && text.contains("\"headers_too_large\""), "{text}");
    }

    #[tokio::test]
    async fn dashs_own_answers_pass_untouched_even_an_empty_4xx() {
        // One request served: its answer, whatever it says, is Dash's.
        let (io, client) = pair(1).await;
        let ours: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(written(io, client, &[ours]).await.as_bytes(), ours);
        // A body that happens to begin a write with a status line is past the head count.
        let (io, client) = pair(1).await;
        let head: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 51\r\n\r\n";
        let body: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nmore";
        let text = written(io, client, &[head, body]).await;
        assert_eq!(text.as_bytes(), [head, body].concat());
    }

    #[tokio::test]
    async fn a_head_split_across_writes_goes_out_as_written() {
        let (io, client) = pair(0).await;
        let parts: [&[u8]; 2] = [b"HTTP/1.1 4", b"31 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n"];
        assert_eq!(written(io, client, &parts).await.as_bytes(), parts.concat());
    }

    #[tokio::test]
    async fn nothing_after_an_upgrade_is_looked_at() {
        let (io, client) = pair(1).await;
        let upgrade: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n";
        let frame: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(written(io, client, &[upgrade, frame]).await.as_bytes(), [upgrade, frame].concat());
    }

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
        let with_more = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}";
        assert!(json_for_hyper_error(400, with_more).is_none(), "a head and nothing more");
        assert_eq!(response_status(b"{\"a\":1}"), None);
    }
}
