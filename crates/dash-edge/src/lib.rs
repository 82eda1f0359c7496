//! The web edge. In a split deployment web nodes are public and ingestors private: a web node
//! hands each `POST /webhooks/*` to an ingestor with a [`Forwarder`], body and signature headers
//! untouched.
//!
//! Candidates come from DNS (`DNS_INGESTOR_QUERY` on `DASH_INGESTOR_PORT`) or, without a DNS
//! query, from the ingestors' own heartbeats. They are tried best first: up by heartbeat and in
//! this region, then up elsewhere, then not heard from, then down; a peer that just failed goes
//! last for a few seconds. A peer that refuses, times out before it answers, or answers 429/503
//! is followed by the next one, up to [`EdgeSettings::max_attempts`].
//!
//! **Architecture invariant:** a retry never stores an event twice. Before the first try, a
//! request that carries neither `webhook-id` nor `Idempotency-Key` (nor a provider's delivery id:
//! `X-GitHub-Delivery`, …) gets an `Idempotency-Key` from the edge, so every ingestor derives the
//! same event ids from it and the store's dedupe absorbs a repeat (the one case: a peer that
//! timed out after it had written).
//!
//! **Who the client is** travels with the request: the edge sets [`CLIENT_ADDR_HEADER`] to the
//! address it took the request from (and [`EDGE_SECRET_HEADER`] when an edge secret is set),
//! after removing any copy of either that the client sent. Ingestors believe that header only
//! from a known edge (see `dash-http`'s client module), so their per-client bounds and the
//! failed-authentication throttle key on the sender, never on the edge. Outgoing connections
//! leave from the address the node listens on when that is a specific one, so the ingestors'
//! membership view recognises them as this edge's.

use std::collections::HashMap;

use dash_log_throttle::LogThrottle;
use parking_lot::Mutex;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dash_cluster::{Membership, PeerHealth};
use dash_discovery::PeerSet;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use tokio::sync::watch;

/// The role whose nodes take forwarded webhooks.
const INGESTOR: &str = "ingestor";
/// How long a peer that failed goes to the back of the line.
const FAILED_PENALTY: Duration = Duration::from_secs(5);
/// Request headers that belong to one connection, not to the request, and are not forwarded.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::EXPECT,
    header::PROXY_AUTHORIZATION,
];
/// The address of the client a forwarded request came from, as the edge saw it.
pub const CLIENT_ADDR_HEADER: &str = "dash-client-addr";
/// The shared edge secret (`DASH_EDGE_SECRET`), proving a forwarded request comes from an edge.
pub const EDGE_SECRET_HEADER: &str = "dash-edge-secret";
/// Headers in which providers name each delivery (GitHub, Shopify, GitLab, Twilio): a request
/// with one already has an id every ingestor reads the same way.
const PROVIDER_DELIVERY_IDS: &[&str] =
    &["x-github-delivery", "x-shopify-webhook-id", "x-gitlab-event-uuid", "i-twilio-idempotency-token"];
/// The `Host` the sender posted to, passed on.
const FORWARDED_HOST: &str = "x-forwarded-host";
/// Response headers passed back to the sender.
const ANSWER_HEADERS: &[HeaderName] = &[header::CONTENT_TYPE, header::RETRY_AFTER];

#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// Port of the ingestors found by DNS.
    pub ingestor_port: u16,
    pub connect_timeout: Duration,
    /// From sending the request to the whole answer, per attempt.
    pub attempt_timeout: Duration,
    /// Peers tried per request.
    pub max_attempts: usize,
    /// Sent with every forwarded request when set, so ingestors trust its client address.
    pub secret: Option<String>,
    /// The address connections leave from: the node's own listen address when it is a specific
    /// one, so ingestors know this edge by its heartbeat. Used only toward peers on the same
    /// kind of network (loopback or not).
    pub local_address: Option<IpAddr>,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        Self {
            ingestor_port: 8080,
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(5),
            max_attempts: 3,
            secret: None,
            local_address: None,
        }
    }
}

/// Where the candidates come from.
#[derive(Clone)]
pub enum Ingestors {
    /// The addresses `DNS_INGESTOR_QUERY` resolves to.
    Dns(watch::Receiver<PeerSet>),
    /// The addresses ingestors announce in their heartbeats (down ones too, tried last).
    Heartbeats,
}

/// An ingestor's answer, to relay as it is.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    /// `Content-Type` and `Retry-After`, when present.
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no ingestor is known to take webhooks")]
    NoIngestors,
    #[error("no ingestor answered ({tried} tried; last: {last})")]
    NoAnswer { tried: usize, last: String },
}

/// Hands webhooks to ingestors; cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    client: reqwest::Client,
    /// Connections that leave from `settings.local_address`, when it is set.
    bound: Option<reqwest::Client>,
    settings: Arc<EdgeSettings>,
    ingestors: Ingestors,
    membership: Membership,
    /// Peers that failed lately, and when.
    failed: Arc<Mutex<HashMap<IpAddr, Instant>>>,
    /// Spreads requests over equally good peers.
    turn: Arc<AtomicUsize>,
    /// A dead peer fails every forward: one warning per period, with the count held back.
    unanswered: Arc<LogThrottle>,
}

impl Forwarder {
    pub fn new(settings: EdgeSettings, ingestors: Ingestors, membership: Membership) -> Result<Self, reqwest::Error> {
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(settings.connect_timeout)
                .timeout(settings.attempt_timeout)
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(64)
                .redirect(reqwest::redirect::Policy::none())
                .tcp_nodelay(true)
                .no_proxy()
        };
        let client = builder().build()?;
        let bound = settings.local_address.map(|ip| builder().local_address(ip).build()).transpose()?;
        Ok(Self {
            client,
            bound,
            settings: Arc::new(settings),
            ingestors,
            membership,
            failed: Arc::default(),
            turn: Arc::default(),
            unanswered: Arc::new(LogThrottle::per_period()),
        })
    }

    /// How many ingestors are known now, and how many of those are up by heartbeat.
    pub fn known(&self) -> (usize, usize) {
        let candidates = self.candidates();
        let up = candidates.iter().filter(|a| self.membership.peer(a.ip(), INGESTOR).is_some_and(|p| p.up)).count();
        (candidates.len(), up)
    }

    /// Sends `POST {path}` with `headers` and `body` to the best ingestor, then to the next while
    /// they fail, naming `client` as the sender. Returns the first real answer; a 429/503 is
    /// returned only when no later peer did better.
    pub async fn forward(
        &self,
        path: &str,
        headers: &HeaderMap,
        body: Bytes,
        client: Option<IpAddr>,
    ) -> Result<Answer, ForwardError> {
        let started = Instant::now();
        let order = self.order();
        if order.is_empty() {
            metrics::counter!("dash_edge_forwarded_total", "outcome" => "no_ingestors").increment(1);
            return Err(ForwardError::NoIngestors);
        }
        let headers = outgoing_headers(headers, client, self.settings.secret.as_deref());
        let mut last_refusal: Option<Answer> = None;
        let mut last_error = String::new();
        let tried = order.len().min(self.settings.max_attempts.max(1));
        for peer in order.into_iter().take(tried) {
            match self.attempt(peer, path, &headers, body.clone()).await {
                Ok(answer) if is_refusal(answer.status) => {
                    tracing::debug!(%peer, status = %answer.status, "ingestor refused; trying the next");
                    last_refusal = Some(answer);
                }
                Ok(answer) => {
                    metrics::counter!("dash_edge_forwarded_total", "outcome" => "answered").increment(1);
                    metrics::histogram!("dash_edge_forward_seconds").record(started.elapsed().as_secs_f64());
                    return Ok(answer);
                }
                Err(err) => {
                    metrics::counter!("dash_edge_attempt_failures_total").increment(1);
                    if let Some(held_back) = self.unanswered.admit() {
                        tracing::warn!(%peer, error = %err, held_back, "ingestor did not answer; trying the next");
                    }
                    self.failed.lock().insert(peer.ip(), Instant::now());
                    last_error = format!("{peer}: {err}");
                }
            }
        }
        match last_refusal {
            Some(answer) => {
                metrics::counter!("dash_edge_forwarded_total", "outcome" => "refused").increment(1);
                Ok(answer)
            }
            None => {
                metrics::counter!("dash_edge_forwarded_total", "outcome" => "no_answer").increment(1);
                Err(ForwardError::NoAnswer { tried, last: last_error })
            }
        }
    }

    async fn attempt(&self, peer: SocketAddr, path: &str, headers: &HeaderMap, body: Bytes) -> reqwest::Result<Answer> {
        let url = format!("http://{peer}{path}");
        let response = self.client_toward(peer.ip()).post(url).headers(headers.clone()).body(body).send().await?;
        let status = response.status();
        let mut answer_headers = HeaderMap::new();
        for name in ANSWER_HEADERS {
            if let Some(value) = response.headers().get(name) {
                answer_headers.insert(name.clone(), value.clone());
            }
        }
        let body = response.bytes().await?;
        Ok(Answer { status, headers: answer_headers, body })
    }

    /// The bound client where the local address can reach `peer` (both loopback, or neither).
    fn client_toward(&self, peer: IpAddr) -> &reqwest::Client {
        match (&self.bound, self.settings.local_address) {
            (Some(bound), Some(local)) if local.is_loopback() == peer.is_loopback() => bound,
            _ => &self.client,
        }
    }

    fn candidates(&self) -> Vec<SocketAddr> {
        match &self.ingestors {
            Ingestors::Dns(peers) => {
                peers.borrow().addrs.iter().map(|ip| SocketAddr::new(*ip, self.settings.ingestor_port)).collect()
            }
            Ingestors::Heartbeats => self.membership.known_addrs(INGESTOR),
        }
    }

    /// The candidates, best first.
    fn order(&self) -> Vec<SocketAddr> {
        let candidates = self.candidates();
        let now = Instant::now();
        let failed = {
            let mut failed = self.failed.lock();
            failed.retain(|_, at| now.duration_since(*at) < FAILED_PENALTY);
            failed.clone()
        };
        rank(
            candidates,
            |ip| self.membership.peer(ip, INGESTOR),
            |ip| failed.contains_key(&ip),
            self.turn.fetch_add(1, Ordering::Relaxed),
        )
    }
}

/// A peer that answered but did not take the request, so another may.
fn is_refusal(status: StatusCode) -> bool {
    status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS
}

/// The sender's headers minus the connection's own and any claim of who the client is or of
/// being an edge, plus the edge's own such claims, and an `Idempotency-Key` when the request has
/// no id of its own.
fn outgoing_headers(incoming: &HeaderMap, client: Option<IpAddr>, secret: Option<&str>) -> HeaderMap {
    let mut headers = incoming.clone();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    // Schemes that sign the URL (Twilio) need the host the sender posted to, as this edge took
    // it: what a sender wrote in its own X-Forwarded-Host says nothing.
    headers.remove(FORWARDED_HOST);
    if let Some(host) = incoming.get(header::HOST) {
        headers.insert(FORWARDED_HOST, host.clone());
    }
    headers.remove(CLIENT_ADDR_HEADER);
    headers.remove(EDGE_SECRET_HEADER);
    if let Some(ip) = client {
        headers
            .insert(CLIENT_ADDR_HEADER, HeaderValue::from_str(&ip.to_string()).expect("an address is a valid value"));
    }
    if let Some(value) = secret.and_then(|s| HeaderValue::from_str(s).ok()) {
        headers.insert(EDGE_SECRET_HEADER, value);
    }
    let has_id =
        ["webhook-id", "idempotency-key"].iter().chain(PROVIDER_DELIVERY_IDS).any(|h| headers.contains_key(*h));
    if !has_id {
        let key = format!("edge-{}", uuid::Uuid::now_v7());
        headers.insert("idempotency-key", HeaderValue::from_str(&key).expect("a UUID is a valid header value"));
    }
    headers
}

/// Orders peers: up and in this region, up elsewhere, not heard from, down; a peer that failed
/// lately after all of those. Equal peers take turns leading, by `turn`.
fn rank(
    mut peers: Vec<SocketAddr>,
    health: impl Fn(IpAddr) -> Option<PeerHealth>,
    failed_lately: impl Fn(IpAddr) -> bool,
    turn: usize,
) -> Vec<SocketAddr> {
    if peers.is_empty() {
        return peers;
    }
    peers.sort();
    let len = peers.len();
    peers.rotate_left(turn % len);
    peers.sort_by_cached_key(|peer| {
        let tier = match health(peer.ip()) {
            Some(PeerHealth { up: true, same_region: true }) => 0,
            Some(PeerHealth { up: true, same_region: false }) => 1,
            None => 2,
            Some(PeerHealth { up: false, .. }) => 3,
        };
        tier + if failed_lately(peer.ip()) { 10 } else { 0 }
    });
    peers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn healthy_nearby_peers_come_first_and_failed_ones_last() {
        let peers = vec![addr("10.0.0.1:80"), addr("10.0.0.2:80"), addr("10.0.0.3:80"), addr("10.0.0.4:80")];
        let health = |ip: IpAddr| match ip.to_string().as_str() {
            "10.0.0.1" => Some(PeerHealth { up: false, same_region: true }),
            "10.0.0.2" => Some(PeerHealth { up: true, same_region: false }),
            "10.0.0.3" => Some(PeerHealth { up: true, same_region: true }),
            _ => None,
        };
        let order = rank(peers.clone(), health, |_| false, 0);
        assert_eq!(order, vec![addr("10.0.0.3:80"), addr("10.0.0.2:80"), addr("10.0.0.4:80"), addr("10.0.0.1:80")]);

        let failed = |ip: IpAddr| ip.to_string() == "10.0.0.3";
        let order = rank(peers, health, failed, 0);
        assert_eq!(order.last(), Some(&addr("10.0.0.3:80")));
        assert_eq!(order[0], addr("10.0.0.2:80"));
    }

    #[test]
    fn equal_peers_take_turns() {
        let peers = vec![addr("10.0.0.1:80"), addr("10.0.0.2:80")];
        let first: Vec<SocketAddr> = (0..4).map(|turn| rank(peers.clone(), |_| None, |_| false, turn)[0]).collect();
        assert_eq!(first, vec![peers[0], peers[1], peers[0], peers[1]]);
    }

    #[test]
    fn requests_without_an_id_get_one_and_connection_headers_stay_behind() {
        let mut incoming = HeaderMap::new();
        incoming.insert(header::HOST, HeaderValue::from_static("dash.example"));
        incoming.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        incoming.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        let out = outgoing_headers(&incoming, None, None);
        assert!(out.get(header::HOST).is_none() && out.get(header::CONTENT_LENGTH).is_none());
        assert_eq!(out.get("x-forwarded-host").unwrap(), "dash.example", "the sender's host goes on");
        incoming.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        let out = outgoing_headers(&incoming, None, None);
        assert_eq!(out.get_all("x-forwarded-host").iter().collect::<Vec<_>>(), vec!["dash.example"]);
        assert_eq!(out.get(header::AUTHORIZATION).unwrap(), "Bearer t");
        assert!(out.get("idempotency-key").unwrap().to_str().unwrap().starts_with("edge-"));

        incoming.insert("webhook-id", HeaderValue::from_static("msg_1"));
        let out = outgoing_headers(&incoming, None, None);
        assert!(out.get("idempotency-key").is_none(), "the sender's own id is kept as the only id");
        assert_eq!(out.get("webhook-id").unwrap(), "msg_1");

        let mut gitlab = HeaderMap::new();
        gitlab.insert("x-gitlab-event-uuid", HeaderValue::from_static("u-1"));
        let out = outgoing_headers(&gitlab, None, None);
        assert!(out.get("idempotency-key").is_none(), "a provider's delivery id is the id");
    }

    #[test]
    fn the_client_and_the_edge_secret_are_the_edges_to_say_never_the_senders() {
        let mut incoming = HeaderMap::new();
        incoming.insert(CLIENT_ADDR_HEADER, HeaderValue::from_static("10.9.9.9"));
        incoming.insert(EDGE_SECRET_HEADER, HeaderValue::from_static("guessed"));
        let out = outgoing_headers(&incoming, None, None);
        assert!(out.get(CLIENT_ADDR_HEADER).is_none() && out.get(EDGE_SECRET_HEADER).is_none(), "{out:?}");

        let client: IpAddr = "2001:db8::7".parse().unwrap();
        let out = outgoing_headers(&incoming, Some(client), Some("s3cret"));
        assert_eq!(out.get_all(CLIENT_ADDR_HEADER).iter().collect::<Vec<_>>(), vec!["2001:db8::7"]);
        assert_eq!(out.get_all(EDGE_SECRET_HEADER).iter().collect::<Vec<_>>(), vec!["s3cret"]);
    }
}
