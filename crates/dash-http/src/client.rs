//! Who a request comes from. Everything keyed per client (the failed-authentication throttle on
//! webhooks, the API, `/live` and the login form; each client's share of the body budget) keys
//! on the address [`Client`] resolves, in this order:
//!
//! 1. **From a web edge.** An edge names the sender of a forwarded webhook in
//!    [`CLIENT_ADDR_HEADER`]. The header is believed only from a known edge: a `web` node in
//!    this node's membership (the address its heartbeats announce is the connection's), or a
//!    request carrying the shared edge secret ([`EDGE_SECRET_HEADER`], `DASH_EDGE_SECRET`). A
//!    known edge that names no client (an older edge during an upgrade) leaves the client
//!    unknown: an edge's own address is never throttled or budgeted as a client.
//! 2. **From the operator's proxy.** Behind Fly's proxy or a load balancer, the proxy names the
//!    client in a header (`DASH_CLIENT_IP_HEADER`: `Fly-Client-IP`, `X-Forwarded-For`, …). It is
//!    believed only when the connection comes from `DASH_TRUSTED_PROXIES`; in a list, the
//!    rightmost address that is not itself a trusted proxy is the client (what a client writes
//!    further left is its own claim, and ignored).
//! 3. **Otherwise the connection's peer.** Either header from anyone else is ignored; that is
//!    logged once a period, since it usually means a misconfigured edge or proxy.
//!
//! IPv6 clients are counted by their /64 ([`client_key`]): one host holds a /64 as easily as
//! one address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::InvalidHeaderName;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};
pub use dash_edge::{CLIENT_ADDR_HEADER, EDGE_SECRET_HEADER};
use dash_log_throttle::LogThrottle;
use ipnet::IpNet;
use subtle::ConstantTimeEq;

use crate::AppState;

/// The role whose nodes forward webhooks to ingestors.
const EDGE_ROLE: &str = "web";

/// Whom this node believes about the client's address.
#[derive(Clone)]
pub struct ClientTrust {
    /// The shared edge secret; a request carrying it is from an edge.
    edge_secret: Option<String>,
    /// The header the operator's proxy names the client in.
    proxy_header: Option<HeaderName>,
    /// Where that proxy connects from.
    trusted_proxies: Vec<IpNet>,
    /// Web edges forward to this node (an ingestor). Elsewhere no edge is believed: a web
    /// node's membership holds itself, and nothing forwards to it.
    accepts_edges: bool,
    /// A header nobody trusted sent: one warning per period.
    ignored: Arc<LogThrottle>,
}

impl Default for ClientTrust {
    /// Edges by membership only; no proxy.
    fn default() -> Self {
        Self::new(None, None, Vec::new()).expect("no header to parse")
    }
}

impl ClientTrust {
    /// `proxy_header` is a header's name, in any case.
    pub fn new(
        edge_secret: Option<String>,
        proxy_header: Option<&str>,
        trusted_proxies: Vec<IpNet>,
    ) -> Result<Self, InvalidHeaderName> {
        let proxy_header = proxy_header.map(|name| HeaderName::from_bytes(name.as_bytes())).transpose()?;
        Ok(Self {
            edge_secret,
            proxy_header,
            trusted_proxies,
            accepts_edges: false,
            ignored: Arc::new(LogThrottle::per_period()),
        })
    }

    /// Whether web edges forward to this node (ingestors): only then is an edge believed.
    pub fn accepting_edges(mut self, accepts: bool) -> Self {
        self.accepts_edges = accepts;
        self
    }

    fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    fn carries_edge_secret(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.edge_secret else { return false };
        headers
            .get(EDGE_SECRET_HEADER)
            .is_some_and(|presented| bool::from(presented.as_bytes().ct_eq(expected.as_bytes())))
    }

    /// The client of a request that came over a connection from `peer`; `is_edge` says whether
    /// an address is a known edge's.
    pub(crate) fn resolve(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        is_edge: impl Fn(IpAddr) -> bool,
    ) -> Option<IpAddr> {
        let peer = canonical(peer);
        if let Some(name) = &self.proxy_header {
            if self.is_trusted_proxy(peer) {
                return Some(self.named_by_proxy(name, headers).map_or(peer, canonical));
            }
            if headers.contains_key(name) {
                self.ignored_header(name.as_str(), peer);
            }
        }
        let named = headers.get(CLIENT_ADDR_HEADER);
        if self.accepts_edges && (self.carries_edge_secret(headers) || is_edge(peer)) {
            return named.and_then(|v| parse_addr(&String::from_utf8_lossy(v.as_bytes()))).map(canonical);
        }
        if named.is_some() {
            self.ignored_header(CLIENT_ADDR_HEADER, peer);
        }
        Some(peer)
    }

    /// Whether `X-Forwarded-Proto` and `X-Forwarded-Host` on a request from `peer` come from a
    /// proxy of the operator's or a known edge, and so say where the sender posted to.
    pub(crate) fn vouches_for_forwarding(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        is_edge: impl Fn(IpAddr) -> bool,
    ) -> bool {
        let peer = canonical(peer);
        self.is_trusted_proxy(peer) || self.accepts_edges && (self.carries_edge_secret(headers) || is_edge(peer))
    }

    /// The rightmost address in the proxy's header that is not a trusted proxy.
    fn named_by_proxy(&self, name: &HeaderName, headers: &HeaderMap) -> Option<IpAddr> {
        // Bytes that are not text spoil only their own entry, never the line or the ones after.
        let values: Vec<String> =
            headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
        let mut entries = values.iter().flat_map(|v| v.split(',')).rev();
        entries.find_map(|entry| match parse_addr(entry) {
            Some(ip) if self.is_trusted_proxy(ip) => None,
            parsed => Some(parsed),
        })?
    }

    fn ignored_header(&self, name: &str, peer: IpAddr) {
        if let Some(held_back) = self.ignored.admit() {
            tracing::warn!(
                header = name,
                %peer,
                held_back,
                "a client-address header from a peer that is neither a known edge nor a trusted proxy was ignored"
            );
        }
    }
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1` or `[2001:db8::1]:80`.
fn parse_addr(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse::<IpAddr>().ok().or_else(|| text.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// An IPv4 address mapped into IPv6 (a dual-stack listener's view) as the IPv4 it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The address a client is counted by: itself, or its /64 for IPv6.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// The client's address by the rules above; absent when the router is driven without a
/// connection (unit tests) or when an edge did not say.
pub(crate) struct Client(pub Option<IpAddr>);

impl FromRequestParts<AppState> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            return Ok(Self(None));
        };
        Ok(Self(state.client_trust.resolve(peer.ip(), &parts.headers, |ip| is_edge(state, ip))))
    }
}

/// Whether connections from `peer` carry many clients' requests: the operator's proxy, or (on an
/// ingestor) a web edge of the membership that is up. The server loop holds such a peer to the
/// connection cap only, never to one client's share of it.
pub fn shared_peer(state: AppState) -> crate::serve::SharedPeer {
    std::sync::Arc::new(move |peer: IpAddr| {
        let peer = canonical(peer);
        state.client_trust.is_trusted_proxy(peer) || state.client_trust.accepts_edges && is_edge(&state, peer)
    })
}

/// An edge is trusted while its heartbeats say it is up, not for as long as it is remembered.
pub(crate) fn is_edge(state: &AppState, ip: IpAddr) -> bool {
    state.membership.as_ref().is_some_and(|m| m.peer(ip, EDGE_ROLE).is_some_and(|p| p.up))
}

/// Whether the forwarded headers (`X-Forwarded-Proto`, `X-Forwarded-Host`) of a request that
/// came over a connection from `connection` were set by the operator's proxy or a known edge.
pub(crate) fn forwarding_vouched(state: &AppState, connection: Option<IpAddr>, headers: &HeaderMap) -> bool {
    connection.is_some_and(|peer| state.client_trust.vouches_for_forwarding(peer, headers, |ip| is_edge(state, ip)))
}

/// The connection's own peer, for what only trusted forwarders may say (`None` without one).
pub(crate) struct Peer(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    const EDGE: &str = "10.0.0.4";
    fn is_edge(peer: IpAddr) -> bool {
        peer == ip(EDGE)
    }

    #[test]
    fn an_edge_is_believed_and_anyone_else_is_not() {
        let trust = ClientTrust::default().accepting_edges(true);
        let named = headers(&[(CLIENT_ADDR_HEADER, "203.0.113.7")]);
        assert_eq!(trust.resolve(ip(EDGE), &named, is_edge), Some(ip("203.0.113.7")));
        assert_eq!(trust.resolve(ip("198.51.100.1"), &named, is_edge), Some(ip("198.51.100.1")), "a spoof");
        assert_eq!(trust.resolve(ip(EDGE), &HeaderMap::new(), is_edge), None, "never the edge itself");
        let garbage = headers(&[(CLIENT_ADDR_HEADER, "not-an-address")]);
        assert_eq!(trust.resolve(ip(EDGE), &garbage, is_edge), None);
        assert_eq!(trust.resolve(ip("198.51.100.1"), &HeaderMap::new(), is_edge), Some(ip("198.51.100.1")));
        let dual_stack = ip("::ffff:10.0.0.4");
        assert_eq!(trust.resolve(dual_stack, &named, is_edge), Some(ip("203.0.113.7")), "an edge seen over [::]");
    }

    #[test]
    fn the_edge_secret_vouches_for_a_peer_membership_does_not_know() {
        let trust = ClientTrust::new(Some("s3cret".into()), None, vec![]).unwrap().accepting_edges(true);
        let with = headers(&[(CLIENT_ADDR_HEADER, "203.0.113.7"), (EDGE_SECRET_HEADER, "s3cret")]);
        let wrong = headers(&[(CLIENT_ADDR_HEADER, "203.0.113.7"), (EDGE_SECRET_HEADER, "guess")]);
        let stranger = ip("198.51.100.1");
        assert_eq!(trust.resolve(stranger, &with, |_| false), Some(ip("203.0.113.7")));
        assert_eq!(trust.resolve(stranger, &wrong, |_| false), Some(stranger));
        assert_eq!(trust.resolve(ip(EDGE), &HeaderMap::new(), is_edge), None, "membership still counts");
        // A node edges do not forward to (a web node) believes no edge, not even itself.
        let web = ClientTrust::new(Some("s3cret".into()), None, vec![]).unwrap();
        assert_eq!(web.resolve(stranger, &with, |_| false), Some(stranger));
        assert_eq!(web.resolve(ip(EDGE), &HeaderMap::new(), is_edge), Some(ip(EDGE)));
    }

    #[test]
    fn a_trusted_proxy_names_the_client_and_only_its_own_entry_counts() {
        let proxies = vec!["172.16.0.0/12".parse().unwrap(), "fdaa::/16".parse().unwrap()];
        let trust = ClientTrust::new(None, Some("X-Forwarded-For"), proxies).unwrap();
        let proxy = ip("172.16.3.4");
        // The client wrote "1.1.1.1" itself; the proxy appended what it saw; a second hop of ours
        // appended its own address.
        let chain = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.7"), ("x-forwarded-for", "172.16.9.9")]);
        assert_eq!(trust.resolve(proxy, &chain, |_| false), Some(ip("203.0.113.7")));
        assert_eq!(trust.resolve(ip("fdaa::3"), &chain, |_| false), Some(ip("203.0.113.7")));
        assert_eq!(trust.resolve(ip("198.51.100.1"), &chain, |_| false), Some(ip("198.51.100.1")), "not a proxy");
        let bracketed = headers(&[("x-forwarded-for", "[2001:db8::1]:443")]);
        assert_eq!(trust.resolve(proxy, &bracketed, |_| false), Some(ip("2001:db8::1")));
        assert_eq!(trust.resolve(proxy, &HeaderMap::new(), |_| false), Some(proxy), "the proxy's own request");
        // An entry that is not text spoils itself only: the proxy's own entry still counts.
        let mut spoiled = headers(&[("x-forwarded-for", "127.0.0.99")]);
        spoiled.append("x-forwarded-for", HeaderValue::from_bytes(b"\x80, 203.0.113.51").unwrap());
        assert_eq!(trust.resolve(proxy, &spoiled, |_| false), Some(ip("203.0.113.51")));
        // A trusted proxy comes first, also when membership would call it an edge.
        let edge_trust = ClientTrust::new(None, Some("X-Forwarded-For"), vec!["10.0.0.4/32".parse().unwrap()])
            .unwrap()
            .accepting_edges(true);
        let via = headers(&[("x-forwarded-for", "203.0.113.9"), (CLIENT_ADDR_HEADER, "198.51.100.7")]);
        assert_eq!(edge_trust.resolve(ip(EDGE), &via, is_edge), Some(ip("203.0.113.9")));
        let mapped = ip("::ffff:172.16.3.4");
        assert_eq!(trust.resolve(mapped, &chain, |_| false), Some(ip("203.0.113.7")), "a dual-stack view of it");

        let fly = ClientTrust::new(None, Some("Fly-Client-IP"), vec!["172.16.0.0/12".parse().unwrap()]).unwrap();
        let named = headers(&[("fly-client-ip", "2001:db8:1:2::9")]);
        assert_eq!(fly.resolve(proxy, &named, |_| false), Some(ip("2001:db8:1:2::9")));
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        assert_eq!(client_key(ip("2001:db8:0:1::1")), ip("2001:db8:0:1::"));
        assert_eq!(client_key(ip("2001:db8:0:1:ffff::2")), ip("2001:db8:0:1::"));
        assert_eq!(client_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(client_key(ip("10.1.2.3")), ip("10.1.2.3"));
    }
}
