//! Roles apart: an ingestor and a web node as separate processes on one PostgreSQL database,
//! with NATS between them (a nats-server of the test's own, killed and restarted under load).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::live::{connect, next, send};
use crate::support::{NatsServer, TestServer, fresh_postgres};

async fn ready(server: &TestServer) -> Value {
    server.client.get(server.url("/ready")).send().await.unwrap().json().await.unwrap()
}

async fn wait_for_bus(server: &TestServer, ok: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let report = ready(server).await;
        // A web edge is healthy once it has heard of an ingestor, too.
        if report["checks"]["bus"]["ok"] == ok && report["status"] == if ok { "healthy" } else { "degraded" } {
            return;
        }
        assert!(Instant::now() < deadline, "bus ok never became {ok}: {report}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_node(server: &TestServer, node: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cluster = server.get_json("/api/cluster").await;
        let found = cluster["nodes"].as_array().unwrap().iter().find(|n| n["node"] == node).cloned();
        if found.as_ref().is_some_and(|n| n["status"] == status) {
            return;
        }
        assert!(Instant::now() < deadline, "{node} never {status}: {cluster}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Frames until one satisfies `done`; every update on the way must follow the one before.
async fn read_until(socket: &mut crate::live::Socket, seq: &mut i64, done: impl Fn(&Value) -> bool) -> Value {
    loop {
        let frame = next(socket).await;
        match frame["type"].as_str() {
            Some("update") => {
                assert_eq!(frame["seq"].as_i64().unwrap(), *seq + 1, "updates are consecutive: {frame}");
                *seq += 1;
            }
            Some("snapshot") => *seq = frame["seq"].as_i64().unwrap(),
            _ => {}
        }
        if done(&frame) {
            return frame;
        }
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL (DASH_TEST_POSTGRES): scripts/test.sh runs it, or cargo test -- --ignored on_postgres"]
async fn web_and_ingestor_apart_over_nats_survive_a_broker_restart_on_postgres() {
    let admin = dash_store::testing::admin_url().expect("DASH_TEST_POSTGRES names the PostgreSQL server");
    let database = fresh_postgres(&admin).await;
    let mut nats = NatsServer::start();
    let common =
        [("DATABASE_URL", database.as_str()), ("NATS_URL", nats.url.as_str()), ("DASH_FLUSH_INTERVAL", "50ms")];
    let with = |extra: [(&'static str, &'static str); 2]| common.iter().copied().chain(extra).collect::<Vec<_>>();
    let mut ingestor = TestServer::start(&with([("APP_ROLE", "ingestor"), ("DASH_NODE_ID", "ingestor-1")])).await;
    let web = TestServer::start(&with([("APP_ROLE", "web"), ("DASH_NODE_ID", "web-1")])).await;
    wait_for_bus(&ingestor, true).await;
    wait_for_bus(&web, true).await;
    // Each node times its own heartbeat's way through NATS, and says it is connected.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = crate::monitoring::metrics_text(&web).await;
        let round_trips = crate::monitoring::sample(&text, "dash_bus_round_trip_seconds_count").unwrap_or(0.0);
        if round_trips >= 2.0 {
            assert_eq!(crate::monitoring::sample(&text, "dash_bus_connected"), Some(1.0), "{text}");
            assert!(crate::monitoring::sample(&text, "dash_bus_round_trip_seconds_sum").is_some_and(|s| s < 1.0));
            break;
        }
        assert!(Instant::now() < deadline, "no NATS round trips timed:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let p = ingestor.create_pipeline("orders").await;
    assert_eq!(web.client.get(web.url("/")).send().await.unwrap().status(), 200, "the web node serves pages");
    assert_eq!(ingestor.client.get(ingestor.url("/")).send().await.unwrap().status(), 404, "the ingestor does not");
    assert_eq!(web.get_json("/api/pipelines/orders").await["id"], "orders", "both read the same database");

    let mut socket = connect(&web).await;
    send(&mut socket, json!({"type": "subscribe", "pipeline": "orders"})).await;
    let mut seq = -1;
    read_until(&mut socket, &mut seq, |f| f["type"] == "snapshot").await;

    // Each node's heartbeat carries its load: the ingestor sees the web node's open socket, the
    // web node the ingestor's intake, on /api/cluster and on the operator's page.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen_by_ingestor = ingestor.get_json("/api/cluster").await;
        let seen_by_web = web.get_json("/api/cluster").await;
        let node = |report: &Value, id: &str| {
            report["nodes"].as_array().unwrap().iter().find(|n| n["node"] == id).cloned().unwrap_or_default()
        };
        let (web_load, ingestor_load) =
            (node(&seen_by_ingestor, "web-1")["load"].clone(), node(&seen_by_web, "ingestor-1")["load"].clone());
        if web_load["live_sockets"].as_u64() >= Some(1) && ingestor_load["spool_limit_bytes"].as_u64() > Some(0) {
            assert!(
                web_load["memory_bytes"].as_u64() > Some(0) && web_load["memory_limit_bytes"].as_u64() > Some(0),
                "{web_load}"
            );
            assert!(web_load["backlog"].is_null(), "a web node has no intake: {web_load}");
            assert_eq!(ingestor_load["store_up"], true, "{ingestor_load}");
            assert!(ingestor_load["backlog"].as_array().is_some_and(|b| !b.is_empty()), "{ingestor_load}");
            assert!(ingestor_load["jobs_pending"].is_u64(), "{ingestor_load}");
            break;
        }
        assert!(Instant::now() < deadline, "no load in heartbeats: {seen_by_ingestor} / {seen_by_web}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let page = web.client.get(web.url("/cluster/nodes")).send().await.unwrap().text().await.unwrap();
    let row = page.split(r#"<tr data-node="ingestor-1">"#).nth(1).unwrap_or_default();
    assert!(row.contains(r#"data-figure="memory""#) && row.contains(r#"data-figure="intake""#), "{page}");
    // Memory is far from its limit here (CPU may not be, on a busy test machine).
    assert!(row.contains(r#"<td data-figure="memory" class="fig ok">"#), "{page}");
    for i in 0..3 {
        assert_eq!(ingestor.post_json(&p, &format!("a{i}"), "{}").await.status(), 202);
        read_until(&mut socket, &mut seq, |f| f["type"] == "update" && f["stats"]["count"] == i + 1).await;
    }
    // The web node times each update from the ingestor's 202 to its own hand-off to browsers
    // (the acknowledgement times cross NATS in the update): the pipeline page shows p50 / p99.
    let panel = web.client.get(web.url("/pipelines/orders/panel")).send().await.unwrap().text().await.unwrap();
    assert!(panel.contains("202 to screen, last hour") && panel.contains(">p50 "), "{panel}");

    // The broker dies: intake goes on, the web node says its figures may be stale.
    nats.stop();
    wait_for_bus(&web, false).await;
    let text = crate::monitoring::metrics_text(&web).await;
    assert_eq!(crate::monitoring::sample(&text, "dash_bus_connected"), Some(0.0), "{text}");
    read_until(&mut socket, &mut seq, |f| f["type"] == "status" && f["state"] == "stale").await;
    for i in 0..3 {
        assert_eq!(ingestor.post_json(&p, &format!("b{i}"), "{}").await.status(), 202, "ingestion is unaffected");
    }
    // The web edge, without DNS, forwards to the ingestors it heard beat, even now that they
    // are silent on the bus (4 s: past the 3 s after which membership calls them down).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(web.post_json(&p, "b3", "{}").await.status(), 202, "forwarded while the bus is down");
    ingestor.wait_for_count(&p, 7, Duration::from_secs(10)).await;

    // Back: the web node resyncs from the database, and updates flow again, consecutively.
    nats.restart();
    wait_for_bus(&web, true).await;
    read_until(&mut socket, &mut seq, |f| f["type"] == "status" && f["state"] == "live").await;
    read_until(&mut socket, &mut seq, |f| f["stats"]["count"] == 7).await;
    wait_for_bus(&ingestor, true).await;
    assert_eq!(ingestor.post_json(&p, "c0", "{}").await.status(), 202);
    let last = read_until(&mut socket, &mut seq, |f| f["stats"]["count"] == 8).await;
    assert_eq!(last["type"], "update", "after the resync, plain updates again: {last}");

    // Membership: the web node hears the ingestor's heartbeats; kill -9 shows it down within
    // 3 s of silence (plus the sweep), a restart shows it up again.
    wait_for_node(&web, "ingestor-1", "up").await;
    let page = web.client.get(web.url("/cluster")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("ingestor-1") && page.contains("web-1"), "{page}");
    ingestor.kill9();
    let killed = Instant::now();
    wait_for_node(&web, "ingestor-1", "down").await;
    assert!(killed.elapsed() < Duration::from_millis(4_000), "down after {:?}", killed.elapsed());
    ingestor.restart();
    wait_for_node(&web, "ingestor-1", "up").await;
    dash_store::testing::drop_database(&admin, &database).await.ok();
}
