//! Peer discovery by DNS. A [`Discovery`] resolves a name's A and AAAA records with
//! hickory-resolver, either through the system's name servers or through the one `DNS_RESOLVER`
//! names; [`Discovery::watch`] re-resolves a name every interval and publishes the addresses as
//! a [`PeerSet`].
//!
//! **Architecture invariant:** a failed lookup never empties a peer set. Until the name server
//! answers again, the last addresses it gave stay in use and the set says why it is stale; only
//! an answer of "no such records" means there are no peers.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dash_task::{StopSignal, StoppableTask};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::sync::watch;

#[cfg(feature = "testing")]
pub mod testing;

/// Longest wait for one lookup, every name server and retry included.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("DNS resolver configuration: {0}")]
    Config(String),
    #[error("DNS lookup of {name} failed: {reason}")]
    Lookup { name: String, reason: String },
}

/// The addresses a name resolved to, sorted and without repeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSet {
    pub addrs: Vec<IpAddr>,
    /// At least one lookup has answered; before that, `addrs` is empty for want of an answer.
    pub resolved: bool,
    /// Why the latest lookup failed, if it did (`addrs` are then the last good answer's).
    pub error: Option<String>,
}

impl PeerSet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.addrs.binary_search(&ip).is_ok()
    }
}

/// A DNS resolver for peer names.
#[derive(Clone)]
pub struct Discovery {
    resolver: TokioResolver,
}

impl Discovery {
    /// The system's resolver configuration, or only `name_server` (UDP, TCP for long answers).
    /// Answers are cached for at most a second, so every refresh sees the name server's view.
    pub fn new(name_server: Option<SocketAddr>) -> Result<Self, DiscoveryError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match name_server {
            Some(addr) => {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                TokioResolver::builder_with_config(ResolverConfig::from_name_servers(vec![server]), provider)
            }
            None => TokioResolver::builder(provider).map_err(|e| DiscoveryError::Config(e.to_string()))?,
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.timeout = LOOKUP_TIMEOUT / 2;
        options.attempts = 1;
        options.positive_max_ttl = Some(Duration::from_secs(1));
        options.negative_max_ttl = Some(Duration::from_secs(1));
        let resolver = builder.build().map_err(|e| DiscoveryError::Config(e.to_string()))?;
        Ok(Self { resolver })
    }

    /// The A and AAAA records of `name` (an IP literal resolves to itself). No records is an
    /// empty answer, not an error.
    pub async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, DiscoveryError> {
        let lookup = tokio::time::timeout(LOOKUP_TIMEOUT, self.resolver.lookup_ip(name))
            .await
            .map_err(|_| DiscoveryError::Lookup { name: name.to_owned(), reason: "timed out".into() })?;
        let mut addrs: Vec<IpAddr> = match lookup {
            Ok(lookup) => lookup.iter().collect(),
            Err(err) if err.is_no_records_found() || err.is_nx_domain() => Vec::new(),
            Err(err) => return Err(DiscoveryError::Lookup { name: name.to_owned(), reason: err.to_string() }),
        };
        addrs.sort();
        addrs.dedup();
        Ok(addrs)
    }

    /// Resolves `name` now and then every `every`, publishing each answer. `what` names the set
    /// in logs and metrics (`cluster`, `ingestors`).
    pub fn watch(
        &self,
        name: String,
        every: Duration,
        what: &'static str,
    ) -> (watch::Receiver<PeerSet>, DiscoveryTask) {
        let (peers, peers_rx) = watch::channel(PeerSet::default());
        let discovery = self.clone();
        let task = StoppableTask::spawn(|stop| refresh(discovery, name, every, what, peers, stop));
        (peers_rx, task)
    }
}

/// A refresh task's handle; join it on shutdown.
pub type DiscoveryTask = StoppableTask;

async fn refresh(
    discovery: Discovery,
    name: String,
    every: Duration,
    what: &'static str,
    peers: watch::Sender<PeerSet>,
    stop: StopSignal,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let answer = tokio::select! {
            answer = discovery.resolve(&name) => answer,
            () = stop.cancelled() => return,
        };
        peers.send_if_modified(|set| apply(set, answer, &name, what));
    }
}

/// Folds one lookup's outcome into the set; true when the set changed.
fn apply(set: &mut PeerSet, answer: Result<Vec<IpAddr>, DiscoveryError>, name: &str, what: &'static str) -> bool {
    match answer {
        Ok(addrs) => {
            metrics::gauge!("dash_discovery_peers", "set" => what).set(addrs.len() as f64);
            if set.addrs == addrs && set.resolved && set.error.is_none() {
                return false;
            }
            let (joined, left) = diff(&set.addrs, &addrs);
            tracing::info!(set = what, %name, peers = addrs.len(), ?joined, ?left, "DNS peers changed");
            *set = PeerSet { addrs, resolved: true, error: None };
            true
        }
        Err(err) => {
            metrics::counter!("dash_discovery_failures_total", "set" => what).increment(1);
            let reason = err.to_string();
            if set.error.as_deref() == Some(reason.as_str()) {
                return false;
            }
            tracing::warn!(set = what, error = %reason, kept = set.addrs.len(), "DNS lookup failed; keeping the last peers");
            set.error = Some(reason);
            true
        }
    }
}

fn diff(before: &[IpAddr], after: &[IpAddr]) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let joined = after.iter().filter(|ip| !before.contains(ip)).copied().collect();
    let left = before.iter().filter(|ip| !after.contains(ip)).copied().collect();
    (joined, left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::DnsServer;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn resolves_a_and_aaaa_records_from_the_given_name_server() {
        let dns = DnsServer::start().await.unwrap();
        dns.set("ingestor.process.dash.internal", vec![ip("127.0.0.3"), ip("::1"), ip("127.0.0.2")]);
        let discovery = Discovery::new(Some(dns.addr())).unwrap();
        let addrs = discovery.resolve("ingestor.process.dash.internal").await.unwrap();
        assert_eq!(addrs, vec![ip("127.0.0.2"), ip("127.0.0.3"), ip("::1")]);
        assert_eq!(discovery.resolve("nobody.dash.internal").await.unwrap(), Vec::<IpAddr>::new());
        assert_eq!(discovery.resolve("127.0.0.9").await.unwrap(), vec![ip("127.0.0.9")], "IP literals");
    }

    #[tokio::test]
    async fn a_watch_follows_changes_and_keeps_the_last_answer_while_the_server_is_silent() {
        let dns = DnsServer::start().await.unwrap();
        dns.set("dash.internal", vec![ip("127.0.0.2")]);
        let discovery = Discovery::new(Some(dns.addr())).unwrap();
        let (mut peers, task) = discovery.watch("dash.internal".into(), Duration::from_millis(100), "cluster");
        let set = peers.wait_for(|set| set.resolved).await.unwrap().clone();
        assert_eq!(set.addrs, vec![ip("127.0.0.2")]);

        dns.set("dash.internal", vec![ip("127.0.0.2"), ip("127.0.0.4")]);
        peers.wait_for(|set| set.addrs.len() == 2).await.unwrap();

        dns.set_silent(true);
        let set = tokio::time::timeout(Duration::from_secs(10), peers.wait_for(|set| set.error.is_some()))
            .await
            .expect("a silent server is noticed")
            .unwrap()
            .clone();
        assert_eq!(set.addrs.len(), 2, "the last answer stays in use: {set:?}");

        dns.set_silent(false);
        dns.set("dash.internal", vec![]);
        let set = peers.wait_for(|set| set.error.is_none() && set.addrs.is_empty()).await.unwrap().clone();
        assert!(set.resolved);
        task.shutdown().await;
    }
}
