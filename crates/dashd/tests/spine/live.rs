//! `/live` with a real WebSocket client against the real server.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::TestServer;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(server: &TestServer) -> Socket {
    let url = server.base.replacen("http://", "ws://", 1) + "/live";
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn send(socket: &mut Socket, message: Value) {
    socket.send(Message::Text(message.to_string().into())).await.unwrap();
}

async fn next(socket: &mut Socket) -> Value {
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
