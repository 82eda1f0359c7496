//! Who the client is, behind a web edge and in front of an ingestor: an attacker and a correct
//! sender on different loopback addresses, through an edge and straight to the ingestor. The
//! failed-authentication throttle must stop the attacker and never the correct sender, and a
//! client-address header from anyone but an edge must change nothing.
//!
//! Each test has a 127.0.N.x network of its own (N from 30 up), a nats-server of its own, and
//! runs on whichever store the pass uses (each node on a database of its own: the edge only
//! forwards).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dash_discovery::testing::DnsServer;
use serde_json::Value;

use crate::support::{NatsServer, Pipeline, TestServer, assert_error, http_client, now_secs, signed_post};

const CLIENT_ADDR: &str = "dash-client-addr";
const EDGE_SECRET: &str = "dash-edge-secret";
const ADMIN: &str = "admin-token-for-the-test";

pub(crate) fn host(net: u8, last: u8) -> IpAddr {
    IpAddr::from([127, 0, net, last])
}

/// An HTTP client whose connections leave from `ip`.
pub(crate) fn client_at(ip: IpAddr) -> reqwest::Client {
    http_client().local_address(ip).timeout(Duration::from_secs(30)).build().unwrap()
}

/// Waits until `server`'s `/api/cluster` shows `node` up.
pub(crate) async fn wait_until_up(server: &TestServer, node: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cluster = server.get_json("/api/cluster").await;
        if cluster["nodes"].as_array().unwrap().iter().any(|n| n["node"] == node && n["status"] == "up") {
            return;
        }
        assert!(Instant::now() < deadline, "{node} never up: {cluster}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the web edge knows an ingestor that is up.
pub(crate) async fn wait_for_ingestor(web: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = web.get_json("/ready").await;
        if ready["checks"]["ingestors"]["up"].as_u64().is_some_and(|up| up >= 1) {
            return;
        }
        assert!(Instant::now() < deadline, "the edge never knew an ingestor: {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A webhook with a signature made under the wrong secret.
fn forged(client: &reqwest::Client, url: &str, i: usize) -> reqwest::RequestBuilder {
    let wrong = dash_signature::SigningSecret::generate();
    signed_post(client, url, &wrong, &format!("forged-{i}"), now_secs(), "application/json", "{}")
}

fn signed(client: &reqwest::Client, url: &str, p: &Pipeline, id: &str) -> reqwest::RequestBuilder {
    signed_post(client, url, &p.secret, id, now_secs(), "application/json", r#"{"n":1}"#)
}

/// Sends `n` forged webhooks; the statuses. Every 429 carries `Retry-After` and the throttle's
/// JSON error.
async fn attack(requests: impl Fn(usize) -> reqwest::RequestBuilder, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        let response = requests(i).send().await.unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
            assert_error(response, 429, "too_many_failed_attempts").await;
        }
    }
    statuses
}

fn throttled_after_its_burst(statuses: &[u16]) {
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[40..].iter().all(|s| *s == 429), "{statuses:?}");
}

async fn metric(server: &TestServer, name: &str) -> f64 {
    let text = crate::monitoring::metrics_text(server).await;
    crate::monitoring::sample(&text, name).unwrap_or(0.0)
}

#[tokio::test]
async fn through_an_edge_the_attacker_is_throttled_and_a_correct_sender_never_is() {
    let net = 30;
    let nats = NatsServer::start();
    let common = [("NATS_URL", nats.url.as_str()), ("DASH_FLUSH_INTERVAL", "50ms")];
    let env = |extra: [(&'static str, &'static str); 2]| common.iter().copied().chain(extra).collect::<Vec<_>>();
    let ingestor = TestServer::start_at(
        &env([("APP_ROLE", "ingestor"), ("DASH_NODE_ID", "ingestor-1")]),
        &format!("{}:0", host(net, 2)),
    )
    .await;
    // The edge listens on its own address; its forwarded requests leave from it, so the
    // ingestor knows them as the edge's by its heartbeats.
    let web =
        TestServer::start_at(&env([("APP_ROLE", "web"), ("DASH_NODE_ID", "web-1")]), &format!("{}:0", host(net, 4)))
            .await;
    wait_for_ingestor(&web).await;
    wait_until_up(&ingestor, "web-1").await;
    let p = ingestor.create_pipeline("guarded").await;
    let url = web.url(&format!("/webhooks/{}", p.id));
    let (attacker, sender) = (client_at(host(net, 20)), client_at(host(net, 21)));

    let statuses = attack(|i| forged(&attacker, &url, i), 60).await;
    throttled_after_its_burst(&statuses);
    // The ingestor throttled the client the edge named: its failures wait, and a correct
    // delivery from it is still taken (the edge cannot tell them apart; the ingestor can).
    assert!(metric(&ingestor, "dash_auth_throttled_total").await >= 1.0, "the ingestor throttled");
    assert_eq!(forged(&attacker, &url, 99).send().await.unwrap().status(), 429);
    let right = signed(&attacker, &url, &p, "attacker-right").send().await.unwrap();
    assert_eq!(right.status(), 202, "a correct delivery is never refused");

    // Through the same edge, the correct sender is not slowed at all.
    for i in 0..20 {
        let response = signed(&sender, &url, &p, &format!("ok-{i}")).send().await.unwrap();
        assert_eq!(response.status(), 202, "{:?}", response.text().await);
    }
    // Nor is a sender without credentials refused as anything but what it is.
    let unsigned = sender.post(&url).header("content-type", "application/json").body("{}").send().await.unwrap();
    assert_error(unsigned, 401, "missing_credentials").await;
    ingestor.wait_for_count(&p, 21, Duration::from_secs(20)).await;
    // The ingestor throttled the attacker by its own address, never the edge's.
    let log = ingestor.log();
    assert!(log.contains(&format!("ip={}", host(net, 20))) && !log.contains(&format!("ip={}", host(net, 4))), "{log}");
}

#[tokio::test]
async fn straight_to_an_ingestor_a_client_address_header_from_a_non_edge_is_ignored() {
    let net = 31;
    let nats = NatsServer::start();
    let ingestor = TestServer::start_at(
        &[("APP_ROLE", "ingestor"), ("NATS_URL", nats.url.as_str()), ("DASH_FLUSH_INTERVAL", "50ms")],
        &format!("{}:0", host(net, 2)),
    )
    .await;
    let p = ingestor.create_pipeline("direct").await;
    let url = ingestor.url(&format!("/webhooks/{}", p.id));
    let (attacker, sender, spoofer) = (client_at(host(net, 20)), client_at(host(net, 21)), client_at(host(net, 22)));

    // A new claimed address on every try does not escape the throttle ...
    let statuses =
        attack(|i| forged(&attacker, &url, i).header(CLIENT_ADDR, format!("10.77.{}.{}", i / 250, i % 250)), 60).await;
    throttled_after_its_burst(&statuses);
    // ... and claiming to be the correct sender blocks only the one who claims it.
    let statuses = attack(|i| forged(&spoofer, &url, i).header(CLIENT_ADDR, host(net, 21).to_string()), 60).await;
    throttled_after_its_burst(&statuses);
    for i in 0..20 {
        let response = signed(&sender, &url, &p, &format!("ok-{i}")).send().await.unwrap();
        assert_eq!(response.status(), 202, "{:?}", response.text().await);
    }
    // A guessed edge secret is one more header, when the ingestor has none.
    let guessed =
        forged(&spoofer, &url, 99).header(EDGE_SECRET, "guessed-guessed-guessed").header(CLIENT_ADDR, "10.1.1.1");
    assert_eq!(guessed.send().await.unwrap().status(), 429);
    ingestor.wait_for_count(&p, 20, Duration::from_secs(20)).await;
    assert!(ingestor.log().contains("client-address header from a peer"), "the ignored header is logged");
}

#[tokio::test]
async fn an_edge_the_ingestor_never_heard_of_is_believed_with_the_edge_secret_only() {
    let net = 32;
    let secret = "edge-secret-for-the-test-0123";
    // The edge and the ingestor share no bus: the ingestor never hears the edge beat, and the
    // edge finds the ingestor by DNS.
    let (ingestor_nats, edge_nats) = (NatsServer::start(), NatsServer::start());
    let ingestor = TestServer::start_at(
        &[
            ("APP_ROLE", "ingestor"),
            ("NATS_URL", ingestor_nats.url.as_str()),
            ("DASH_FLUSH_INTERVAL", "50ms"),
            ("DASH_EDGE_SECRET", secret),
        ],
        &format!("{}:0", host(net, 2)),
    )
    .await;
    let port = ingestor.base.rsplit(':').next().unwrap().to_owned();
    let dns = DnsServer::start().await.unwrap();
    dns.set("ingestor.dash.internal", vec![host(net, 2)]);
    let resolver = dns.addr().to_string();
    let web = TestServer::start_at(
        &[
            ("APP_ROLE", "web"),
            ("NATS_URL", edge_nats.url.as_str()),
            ("DNS_RESOLVER", resolver.as_str()),
            ("DNS_INGESTOR_QUERY", "ingestor.dash.internal"),
            ("DASH_INGESTOR_PORT", port.as_str()),
            ("DASH_EDGE_SECRET", secret),
        ],
        &format!("{}:0", host(net, 4)),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while web.get_json("/ready").await["checks"]["ingestors"]["known"] != 1 {
        assert!(Instant::now() < deadline, "the edge never resolved the ingestor");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = ingestor.create_pipeline("by-secret").await;
    let url = web.url(&format!("/webhooks/{}", p.id));
    let (attacker, sender) = (client_at(host(net, 20)), client_at(host(net, 21)));
    let statuses = attack(|i| forged(&attacker, &url, i), 60).await;
    throttled_after_its_burst(&statuses);
    for i in 0..20 {
        let response = signed(&sender, &url, &p, &format!("ok-{i}")).send().await.unwrap();
        assert_eq!(response.status(), 202, "{:?}", response.text().await);
    }

    // Straight to the ingestor, the secret makes any peer an edge, and a wrong one makes none.
    let direct = ingestor.url(&format!("/webhooks/{}", p.id));
    let vouched = client_at(host(net, 23));
    let statuses =
        attack(|i| forged(&vouched, &direct, i).header(EDGE_SECRET, secret).header(CLIENT_ADDR, "10.1.1.1"), 60).await;
    throttled_after_its_burst(&statuses);
    let other = signed(&vouched, &direct, &p, "vouched-ok").header(EDGE_SECRET, secret).header(CLIENT_ADDR, "10.1.1.2");
    assert_eq!(other.send().await.unwrap().status(), 202, "the connection's own address was never blocked");
    let statuses = attack(
        |i| {
            forged(&vouched, &direct, i)
                .header(EDGE_SECRET, "not-the-edge-secret-at-all")
                .header(CLIENT_ADDR, format!("10.2.0.{i}"))
        },
        60,
    )
    .await;
    throttled_after_its_burst(&statuses);
    ingestor.wait_for_count(&p, 21, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn behind_the_operators_proxy_its_header_names_the_client_and_nobody_elses_does() {
    let net = 33;
    let proxy = host(net, 9);
    let nets = format!("{proxy}/32");
    let server = TestServer::start_at(
        &[
            ("DASH_CLIENT_IP_HEADER", "Fly-Client-IP"),
            ("DASH_TRUSTED_PROXIES", nets.as_str()),
            ("DASH_ADMIN_TOKEN", ADMIN),
        ],
        &format!("{}:0", host(net, 2)),
    )
    .await;
    let p = server.create_pipeline("proxied").await;
    let url = server.url(&format!("/webhooks/{}", p.id));
    let through_proxy = client_at(proxy);
    let statuses = attack(|i| forged(&through_proxy, &url, i).header("fly-client-ip", "203.0.113.66"), 60).await;
    throttled_after_its_burst(&statuses);
    for i in 0..10 {
        let response =
            signed(&through_proxy, &url, &p, &format!("ok-{i}")).header("fly-client-ip", "203.0.113.7").send().await;
        assert_eq!(response.unwrap().status(), 202, "another client behind the same proxy");
    }
    // From anyone else the header is the sender's own claim.
    let direct = client_at(host(net, 20));
    let statuses =
        attack(|i| forged(&direct, &url, i).header("fly-client-ip", format!("198.51.100.{}", i % 250)), 60).await;
    throttled_after_its_burst(&statuses);
    // The admin API keys on the same client: a guesser of the admin token behind the proxy
    // waits, its neighbour behind the same proxy does not.
    let api = |client: &'static str, token: &'static str| {
        through_proxy.get(server.url("/api/pipelines")).bearer_auth(token).header("fly-client-ip", client).send()
    };
    for _ in 0..40 {
        api("203.0.113.66", "not-the-admin-token").await.unwrap();
    }
    assert_eq!(api("203.0.113.66", ADMIN).await.unwrap().status(), 429);
    let api = |client: &'static str| api(client, ADMIN);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed: Value = api("203.0.113.8").await.unwrap().json().await.unwrap();
        if listed["pipelines"][0]["count"] == 10 {
            break;
        }
        assert!(Instant::now() < deadline, "the 10 accepted events were never counted: {listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
