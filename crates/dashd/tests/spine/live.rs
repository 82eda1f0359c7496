//! `/live` with a real WebSocket client against the real server.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::TestServer;

pub(crate) type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn connect(server: &TestServer) -> Socket {
    let url = server.base.replacen("http://", "ws://", 1) + "/live";
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

pub(crate) async fn send(socket: &mut Socket, message: Value) {
    socket.send(Message::Text(message.to_string().into())).await.unwrap();
}

pub(crate) async fn next(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap().unwrap().unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test]
async fn snapshot_then_strictly_consecutive_updates_and_resume_after_reconnect() {
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "30ms")]).await;
    let p = server.create_pipeline("live").await;
    let mut socket = connect(&server).await;
    send(&mut socket, json!({"type": "subscribe", "pipeline": p.id})).await;
    let snapshot = next(&mut socket).await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    assert_eq!((snapshot["seq"].as_i64(), snapshot["stats"]["count"].as_i64()), (Some(0), Some(0)));

    let mut last_seq = 0;
    for i in 0..6 {
        assert_eq!(server.post_json(&p, &format!("l{i}"), "{}").await.status(), 202);
        tokio::time::sleep(Duration::from_millis(60)).await; // let each land in its own batch
    }
    let mut count = 0;
    while count < 6 {
        let update = next(&mut socket).await;
        assert_eq!(update["type"], "update", "{update}");
        assert_eq!(update["seq"].as_i64().unwrap(), last_seq + 1, "seq rises by exactly 1: {update}");
        last_seq = update["seq"].as_i64().unwrap();
        count = update["stats"]["count"].as_i64().unwrap();
        assert!(update["stats"]["last_event_at"].is_string());
    }

    // Gone for a while; events keep coming; back with after_seq: a snapshot catches up.
    socket.close(None).await.unwrap();
    for i in 0..3 {
        assert_eq!(server.post_json(&p, &format!("m{i}"), "{}").await.status(), 202);
    }
    server.wait_for_count(&p, 9, Duration::from_secs(10)).await;
    let mut socket = connect(&server).await;
    send(&mut socket, json!({"type": "subscribe", "pipeline": p.id, "after_seq": last_seq})).await;
    let resumed = next(&mut socket).await;
    assert_eq!(resumed["type"], "snapshot");
    assert_eq!(resumed["stats"]["count"], 9);
    let resumed_seq = resumed["seq"].as_i64().unwrap();
    assert!(resumed_seq > last_seq);
    assert_eq!(server.post_json(&p, "n0", "{}").await.status(), 202);
    let update = next(&mut socket).await;
    assert_eq!((update["type"].as_str(), update["seq"].as_i64()), (Some("update"), Some(resumed_seq + 1)));
}

#[tokio::test]
async fn bad_messages_get_error_frames_and_the_connection_stays() {
    let server = TestServer::start(&[]).await;
    let p = server.create_pipeline("errors").await;
    let mut socket = connect(&server).await;
    socket.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(next(&mut socket).await["code"], "invalid_message");
    send(&mut socket, json!({"type": "subscribe", "pipeline": "nope"})).await;
    assert_eq!(next(&mut socket).await["code"], "pipeline_not_found");
    send(&mut socket, json!({"type": "subscribe", "pipeline": p.id})).await;
    assert_eq!(next(&mut socket).await["type"], "snapshot");
}

#[tokio::test]
async fn live_needs_the_admin_token_when_one_is_set() {
    let server = TestServer::start(&[("DASH_ADMIN_TOKEN", "t0ken")]).await;
    let url = server.base.replacen("http://", "ws://", 1) + "/live";
    assert!(tokio_tungstenite::connect_async(url.as_str()).await.is_err(), "refused without the token");
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url.as_str()).unwrap();
    request.headers_mut().insert("authorization", "Bearer t0ken".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_ok());
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: nix::unistd::Pid) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_client_that_stops_reading_neither_grows_the_server_nor_delays_another() {
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "5ms")]).await;
    let p = server.create_pipeline("firehose").await;
    let url = server.base.replacen("http://", "ws://", 1) + "/live";
    let subscribe = json!({"type": "subscribe", "pipeline": p.id});

    // The stalled client: a tiny receive window; it subscribes and then reads nothing.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let stream = tcp.connect(server.base.trim_start_matches("http://").parse().unwrap()).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (mut stalled, _) = tokio_tungstenite::client_async(url.as_str(), stream).await.unwrap();
    send(&mut stalled, subscribe.clone()).await;

    let mut reader = connect(&server).await;
    send(&mut reader, subscribe.clone()).await;
    assert_eq!(next(&mut reader).await["type"], "snapshot");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = rss_kib(server.pid());

    // Four paced senders, one event per request, 5 ms flushes: a few hundred updates, more than
    // the kernel's buffers plus the stalled client's queue hold.
    const EVENTS: i64 = 2400;
    let base = server.base.clone();
    let senders: Vec<_> = (0..4)
        .map(|s| {
            let (client, base, id, secret) = (server.client.clone(), base.clone(), p.id.clone(), p.secret.clone());
            tokio::spawn(async move {
                for i in 0..EVENTS / 4 {
                    let (msg, ts, body) = (format!("f{s}-{i}"), crate::support::now_secs(), "{}");
                    let response = client
                        .post(format!("{base}/webhooks/{id}"))
                        .header("content-type", "application/json")
                        .header("webhook-id", &msg)
                        .header("webhook-timestamp", ts.to_string())
                        .header("webhook-signature", secret.sign(&msg, ts, body.as_bytes()))
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 202);
                    tokio::time::sleep(Duration::from_millis(4)).await;
                }
            })
        })
        .collect();

    // The reading client sees every update, in order, while the other one is stalled.
    let mut last_seq = 0;
    let mut count = 0;
    let mut worst_delay = 0i64;
    while count < EVENTS {
        let frame = next(&mut reader).await;
        assert_eq!(frame["type"], "update", "the reading client is never resynced: {frame}");
        assert_eq!(frame["seq"].as_i64().unwrap(), last_seq + 1, "{frame}");
        last_seq = frame["seq"].as_i64().unwrap();
        count = frame["stats"]["count"].as_i64().unwrap();
        let at = chrono::DateTime::parse_from_rfc3339(frame["at"].as_str().unwrap()).unwrap();
        worst_delay = worst_delay.max(chrono::Utc::now().timestamp_millis() - at.timestamp_millis());
    }
    for sender in senders {
        sender.await.unwrap();
    }
    assert!(last_seq > 200, "enough updates to fill the stalled client's queue: {last_seq}");
    assert!(worst_delay < 2_000, "an update reached the reading client {worst_delay} ms after its commit");
    let grown = rss_kib(server.pid()) - rss_before;
    assert!(grown < 32 * 1024, "server RSS grew {grown} KiB while a client was stalled");

    // The stalled client reads again: snapshots where it missed updates, never a gap, and it
    // reaches the latest figures with the next update.
    assert_eq!(server.post_json(&p, "last", "{}").await.status(), 202);
    let mut seen = -1;
    let mut snapshots = 0;
    loop {
        let frame = next(&mut stalled).await;
        let seq = frame["seq"].as_i64().unwrap();
        match frame["type"].as_str() {
            Some("snapshot") => snapshots += 1,
            Some("update") => assert!(seen < 0 || seq == seen + 1, "a gap after {seen}: {frame}"),
            _ => panic!("{frame}"),
        }
        seen = seq;
        if frame["stats"]["count"] == EVENTS + 1 {
            break;
        }
    }
    assert!(
        snapshots >= 2,
        "the stalled client was resynced, not sent a gap ({snapshots} snapshots, {last_seq} updates)"
    );
}

/// A `/live` session opened from `local`: the socket, or the HTTP answer that refused it.
async fn live_from(
    server: &TestServer,
    local: std::net::IpAddr,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, (u16, Option<String>)> {
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((local, 0).into()).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let url = format!("ws://{addr}/live");
    match tokio_tungstenite::client_async(url, stream).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err((
            response.status().as_u16(),
            response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()),
        )),
        Err(other) => panic!("{other}"),
    }
}

async fn health_from(server: &TestServer, local: std::net::IpAddr) -> u16 {
    let client = crate::support::http_client().local_address(local).build().unwrap();
    client.get(server.url("/health")).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn live_sessions_hold_their_connection_slot_and_each_client_its_share() {
    let host = |last: u8| std::net::IpAddr::from([127, 0, 36, last]);
    let env = [("DASH_MAX_CONNECTIONS", "20"), ("DASH_MAX_LIVE_PER_CLIENT", "8")];
    let server = TestServer::start_at(&env, &format!("{}:0", host(2))).await;
    // One address gets its share of sessions, then 503 with Retry-After.
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..10 {
        match live_from(&server, host(20)).await {
            Ok(socket) => held.push(socket),
            Err(answer) => refused.push(answer),
        }
    }
    assert_eq!(held.len(), 8);
    assert!(refused.iter().all(|(status, retry)| *status == 503 && retry.is_some()), "{refused:?}");
    // Another address still gets /health and /live.
    assert_eq!(health_from(&server, host(21)).await, 200);
    held.push(live_from(&server, host(21)).await.unwrap());
    // Sessions count against the connection cap for as long as they last: with every place
    // taken by one, a newcomer finds none to evict.
    for _ in 0..8 {
        held.push(live_from(&server, host(22)).await.unwrap());
    }
    for _ in 0..3 {
        held.push(live_from(&server, host(23)).await.unwrap());
    }
    assert_eq!(held.len(), 20);
    assert_eq!(health_from(&server, host(24)).await, 503);
    // Sessions that end give their places back.
    for mut socket in held.drain(..8) {
        let _ = socket.close(None).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while health_from(&server, host(24)).await != 200 {
        assert!(std::time::Instant::now() < deadline, "closed sessions never gave their places back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(live_from(&server, host(20)).await.is_ok(), "the first address may open sessions again");
}

/// One address can hold its share of the server's connections and no more, /live sessions
/// included: the excess gets 503 with Retry-After at once and costs the node nothing that
/// lasts, while another address still gets /health, pages and /live.
#[tokio::test]
async fn one_address_holds_its_share_of_connections_and_the_rest_get_through() {
    let host = |last: u8| std::net::IpAddr::from([127, 0, 37, last]);
    let env = [
        ("DASH_MAX_CONNECTIONS", "64"),
        ("DASH_MAX_CONNECTIONS_PER_CLIENT", "16"),
        ("DASH_MAX_LIVE_PER_CLIENT", "1000"),
    ];
    let server = TestServer::start_at(&env, &format!("{}:0", host(2))).await;
    let rss_before = rss_kib(server.pid());
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..40 {
        match live_from(&server, host(20)).await {
            Ok(socket) => held.push(socket),
            Err(answer) => refused.push(answer),
        }
    }
    assert_eq!(held.len(), 16, "its share of the connection cap");
    assert!(refused.iter().all(|(status, retry)| *status == 503 && retry.is_some()), "{refused:?}");
    // Hundreds more sockets from the same address: each refused at once.
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    for _ in 0..500 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((host(20), 0).into()).unwrap();
        let mut tcp = socket.connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        assert!(answer.starts_with(b"HTTP/1.1 503"), "{}", String::from_utf8_lossy(&answer));
    }
    let grown = rss_kib(server.pid()).saturating_sub(rss_before);
    assert!(grown < 32 * 1024, "the node grew {grown} KiB refusing one address");
    // Everyone else: health, a page and a live session.
    assert_eq!(health_from(&server, host(21)).await, 200);
    let client = crate::support::http_client().local_address(host(21)).build().unwrap();
    assert_eq!(client.get(server.url("/")).send().await.unwrap().status(), 200);
    held.push(live_from(&server, host(21)).await.unwrap());
    let text = crate::monitoring::metrics_text(&server).await;
    let counted = crate::monitoring::sample(&text, "dash_http_client_connections_refused_total").unwrap_or(0.0);
    assert!(counted >= 524.0, "{counted} refusals counted");
    // Sessions that end give their places back to their client.
    for mut socket in held.drain(..4) {
        let _ = socket.close(None).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while live_from(&server, host(20)).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "closed sessions never gave their places back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
