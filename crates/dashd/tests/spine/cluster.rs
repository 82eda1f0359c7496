//! Several hosts on one machine: two ingestors and two web nodes on distinct 127.0.N.x
//! addresses, one PostgreSQL database, a nats-server and a DNS server of the test's own. Senders
//! only ever talk to the web nodes, which find the ingestors by DNS and forward to them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use dash_discovery::testing::DnsServer;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::live::{connect, send};
use crate::support::{NatsServer, Pipeline, TestServer, fresh_postgres, stored_events_postgres};

const CLUSTER_NAME: &str = "dash.internal";
const INGESTOR_NAME: &str = "ingestor.process.dash.internal";
/// Concurrent senders, and the events each sends, one request per event.
const SENDERS: usize = 4;
const EVENTS_PER_SENDER: usize = 100;

struct Cluster {
    admin: String,
    database: String,
    dns: DnsServer,
    nats: NatsServer,
    /// ingestor-a (127.0.N.2, region ams), ingestor-b (127.0.N.3, fra), same port.
    ingestors: Vec<TestServer>,
    /// web-a (127.0.N.4, ams), web-b (127.0.N.5, fra).
    webs: Vec<TestServer>,
}

fn host(net: u8, last: u8) -> IpAddr {
    IpAddr::from([127, 0, net, last])
}

/// A port free on every one of `ips` (ingestors share one port, as on a private network).
fn common_port(ips: &[IpAddr]) -> u16 {
    loop {
        let first = std::net::TcpListener::bind((ips[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        if ips[1..].iter().all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok()) {
            return port;
        }
    }
}

impl Cluster {
    /// On the PostgreSQL server `DASH_TEST_POSTGRES` names. `net` keeps parallel tests apart.
    async fn start(net: u8) -> Cluster {
        let admin = dash_store::testing::admin_url().expect("DASH_TEST_POSTGRES names the PostgreSQL server");
        let database = fresh_postgres(&admin).await;
        let nats = NatsServer::start();
        let dns = DnsServer::start().await.unwrap();
        let (ingestor_ips, web_ips) = ([host(net, 2), host(net, 3)], [host(net, 4), host(net, 5)]);
        // DNS also lists a machine that never comes up (127.0.N.9).
        let listed: Vec<IpAddr> = ingestor_ips.iter().chain(&web_ips).copied().chain([host(net, 9)]).collect();
        dns.set(CLUSTER_NAME, listed);
        dns.set(INGESTOR_NAME, ingestor_ips.to_vec());
        let port = common_port(&ingestor_ips).to_string();
        let resolver = dns.addr().to_string();
        let common = [
            ("DATABASE_URL", database.as_str()),
            ("NATS_URL", nats.url.as_str()),
            ("DNS_RESOLVER", resolver.as_str()),
            ("DNS_CLUSTER_QUERY", CLUSTER_NAME),
            ("DNS_CLUSTER_INTERVAL", "500ms"),
            ("DASH_FLUSH_INTERVAL", "50ms"),
        ];
        let env = |extra: &[(&'static str, &'static str)]| common.iter().chain(extra).copied().collect::<Vec<_>>();
        let mut ingestors = Vec::new();
        for (ip, name, region) in [(ingestor_ips[0], "ingestor-a", "ams"), (ingestor_ips[1], "ingestor-b", "fra")] {
            let env = env(&[("APP_ROLE", "ingestor"), ("DASH_NODE_ID", name), ("DASH_REGION", region)]);
            ingestors.push(TestServer::start_at(&env, &format!("{ip}:{port}")).await);
        }
        let mut webs = Vec::new();
        for (ip, name, region) in [(web_ips[0], "web-a", "ams"), (web_ips[1], "web-b", "fra")] {
            let mut env = env(&[("APP_ROLE", "web"), ("DASH_NODE_ID", name), ("DASH_REGION", region)]);
            env.extend([("DNS_INGESTOR_QUERY", INGESTOR_NAME), ("DASH_INGESTOR_PORT", port.as_str())]);
            webs.push(TestServer::start_at(&env, &format!("{ip}:0")).await);
        }
        let cluster = Cluster { admin, database, dns, nats, ingestors, webs };
        for web in &cluster.webs {
            wait_until(web, "both ingestors known and up", |ready| {
                ready["checks"]["ingestors"] == json!({ "ok": true, "known": 2, "up": 2 })
            })
            .await;
        }
        cluster
    }

    async fn stored_once(&self, pipeline: &str, acked: &[String], unnamed: i64) {
        let (rows, count) = stored_events_postgres(&self.database, pipeline).await;
        let copies: HashMap<String, i64> = rows.into_iter().collect();
        assert!(copies.values().all(|c| *c == 1), "an event stored twice");
        for id in acked {
            assert_eq!(copies.get(id), Some(&1), "acknowledged event {id} stored exactly once");
        }
        assert_eq!(copies.len(), acked.len() + unnamed as usize, "nothing else stored");
        assert_eq!(count, copies.len() as i64, "the pipeline's count matches its rows");
    }

    async fn stop(self) {
        drop(self.webs);
        drop(self.ingestors);
        dash_store::testing::drop_database(&self.admin, &self.database).await.ok();
    }
}

async fn wait_until(server: &TestServer, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready: Value = server.client.get(server.url("/ready")).send().await.unwrap().json().await.unwrap();
        if done(&ready) {
            return ready;
        }
        assert!(Instant::now() < deadline, "never {what}: {ready}\nlog:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn node_status(web: &TestServer, node: &str) -> Option<Value> {
    let cluster = web.get_json("/api/cluster").await;
    cluster["nodes"].as_array().unwrap().iter().find(|n| n["node"] == node).cloned()
}

async fn wait_for_node(web: &TestServer, node: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while node_status(web, node).await.is_none_or(|n| n["status"] != status) {
        assert!(Instant::now() < deadline, "{node} never {status}: {}", web.get_json("/api/cluster").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One sender: `EVENTS_PER_SENDER` signed single-event requests, alternating between the web
/// nodes, each retried (as a real sender would) until it gets 202. Returns the ids acknowledged.
async fn sender(webs: &[TestServer], pipeline: &Pipeline, sender: usize) -> Vec<String> {
    let mut acked = Vec::new();
    for k in 0..EVENTS_PER_SENDER {
        let id = format!("s{sender}-{k}");
        let body = json!({ "sender": sender, "k": k }).to_string();
        for attempt in 0.. {
            let web = &webs[(sender + k + attempt) % webs.len()];
            let response = web.post_json(pipeline, &id, &body).await;
            match response.status().as_u16() {
                202 => break,
                429 | 503 => {
                    assert!(response.headers().contains_key("retry-after"), "a refusal says when to retry");
                    assert!(attempt < 100, "{id} never accepted");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => panic!("{id}: {other} {}", response.text().await.unwrap()),
            }
        }
        acked.push(id);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    acked
}

async fn send_all(webs: &[TestServer], pipeline: &Pipeline) -> Vec<String> {
    let senders = futures_util::future::join_all((0..SENDERS).map(|s| sender(webs, pipeline, s))).await;
    senders.into_iter().flatten().collect()
}

/// Reads `/live` frames until the count is `total`: updates strictly consecutive, or a
/// snapshot that resyncs. Returns the status frames seen (`stale` / `live`).
async fn follow(socket: &mut crate::live::Socket, total: i64) -> Vec<String> {
    let (mut seq, mut statuses) = (i64::MIN, Vec::new());
    let mut last = Value::Null;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), socket.next())
            .await
            .unwrap_or_else(|_| panic!("no frame for 60 s, waiting for count {total}; last frame: {last}"))
            .unwrap();
        let Message::Text(text) = message.unwrap() else { continue };
        let frame: Value = serde_json::from_str(&text).unwrap();
        match frame["type"].as_str() {
            Some("update") => {
                let got = frame["seq"].as_i64().unwrap();
                assert!(seq == i64::MIN || got == seq + 1, "consecutive, or a snapshot first: {frame} after {seq}");
                seq = got;
            }
            Some("snapshot") => seq = frame["seq"].as_i64().unwrap(),
            Some("status") => statuses.push(frame["state"].as_str().unwrap().to_owned()),
            _ => {}
        }
        if frame["stats"]["count"] == total {
            return statuses;
        }
        last = frame;
    }
}

async fn subscribe(web: &TestServer, pipeline: &Pipeline) -> crate::live::Socket {
    let mut socket = connect(web).await;
    send(&mut socket, json!({ "type": "subscribe", "pipeline": pipeline.id })).await;
    socket
}

#[tokio::test]
#[ignore = "needs PostgreSQL (DASH_TEST_POSTGRES): scripts/test.sh runs it, or cargo test -- --ignored on_postgres"]
async fn web_edges_forward_by_dns_and_lose_nothing_when_an_ingestor_is_killed_on_postgres() {
    let mut cluster = Cluster::start(10).await;
    let web_a = &cluster.webs[0];
    // DNS and heartbeats, each checked against the other.
    let phantom = node_status(web_a, "127.0.10.9").await.expect("a DNS-only peer is listed");
    assert_eq!((&phantom["status"], &phantom["in_dns"]), (&json!("unreachable"), &json!(true)), "{phantom}");
    wait_for_node(web_a, "ingestor-b", "up").await;
    assert_eq!(node_status(web_a, "ingestor-b").await.unwrap()["in_dns"], true);
    let page = web_a.client.get(web_a.url("/cluster")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("unreachable") && page.contains("127.0.10.9"), "{page}");

    let pipeline = web_a.create_pipeline("orders").await;
    let mut socket = subscribe(&cluster.webs[1], &pipeline).await;

    // Senders stream through both web nodes; ingestor-a is killed with -9 mid-stream, and
    // restarted once the web nodes have seen it down.
    let (ingestors, webs) = (&mut cluster.ingestors, &cluster.webs);
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        ingestors[0].kill9();
        let killed = Instant::now();
        wait_for_node(&webs[0], "ingestor-a", "down").await;
        let down_after = killed.elapsed();
        ingestors[0].restart_same_port();
        wait_for_node(&webs[0], "ingestor-a", "up").await;
        down_after
    };
    let streamed = (SENDERS * EVENTS_PER_SENDER) as i64;
    let (acked, down_after, _) = tokio::join!(send_all(webs, &pipeline), chaos, follow(&mut socket, streamed));
    eprintln!("ingestor-a shown down {down_after:?} after kill -9");
    assert!(down_after < Duration::from_millis(4_000), "down after {down_after:?}");
    assert_eq!(acked.len() as i64, streamed);
    let mut failovers = 0.0;
    for web in &cluster.webs {
        let metrics = web.client.get(web.url("/metrics")).send().await.unwrap().text().await.unwrap();
        failovers += metrics
            .lines()
            .find_map(|l| l.strip_prefix("dash_edge_attempt_failures_total "))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap());
    }
    assert!(failovers >= 1.0, "the kill happened mid-stream: some request went to the next ingestor");

    // A request with no id of its own gets one at the edge, and is stored once.
    for _ in 0..5 {
        let response = cluster.webs[1]
            .client
            .post(cluster.webs[1].url(&format!("/webhooks/{}", pipeline.id)))
            .bearer_auth(&pipeline.token)
            .header("content-type", "application/json")
            .body(r#"{"unnamed":true}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    follow(&mut socket, streamed + 5).await;
    cluster.stored_once(&pipeline.id, &acked, 5).await;

    // Errors still come from the ingestor, relayed untouched.
    let bad = cluster.webs[0].post_json(&pipeline, "bad-1", "{not json").await;
    assert_eq!(bad.status(), 400);
    let unknown = cluster.webs[0]
        .client
        .post(cluster.webs[0].url("/webhooks/nope"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // No ingestor left in DNS: 503 with Retry-After, and the web node says it is degraded.
    cluster.dns.set(INGESTOR_NAME, vec![]);
    wait_until(&cluster.webs[0], "without ingestors", |r| r["checks"]["ingestors"]["known"] == 0).await;
    let refused = cluster.webs[0].post_json(&pipeline, "late-1", "{}").await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_ingestor", "{body}");
    cluster.stop().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (DASH_TEST_POSTGRES): scripts/test.sh runs it, or cargo test -- --ignored on_postgres"]
async fn a_nats_restart_under_load_loses_nothing_and_dashboards_resync_on_postgres() {
    let mut cluster = Cluster::start(20).await;
    let pipeline = cluster.webs[0].create_pipeline("clicks").await;
    let mut socket = subscribe(&cluster.webs[1], &pipeline).await;

    // The broker is down for 4 s mid-stream: longer than it takes membership to call every
    // ingestor down, so the edges forward to "down" peers, as they should while only the bus
    // is out.
    let (nats, webs) = (&mut cluster.nats, &cluster.webs);
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        nats.stop();
        tokio::time::sleep(Duration::from_secs(4)).await;
        nats.restart();
    };
    let streamed = (SENDERS * EVENTS_PER_SENDER) as i64;
    let (acked, (), statuses) = tokio::join!(send_all(webs, &pipeline), chaos, follow(&mut socket, streamed));
    assert!(statuses.iter().any(|s| s == "stale"), "the dashboard was told it went stale: {statuses:?}");
    assert_eq!(statuses.last().map(String::as_str), Some("live"), "and live again: {statuses:?}");
    cluster.stored_once(&pipeline.id, &acked, 0).await;
    cluster.stop().await;
}
