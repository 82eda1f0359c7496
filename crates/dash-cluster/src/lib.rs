//! Cluster membership. Every node publishes a [`NodeHeartbeat`] on the bus each second and
//! keeps a view of every node it hears: up while heartbeats arrive, down after [`DOWN_AFTER`] of
//! silence. Transitions are logged as `node-up` / `node-down` events.
//!
//! Where `DNS_CLUSTER_QUERY` is set, the view is checked against DNS as well: a node that DNS
//! lists but that never beats shows as `unreachable`, and a beating node that DNS does not list
//! carries `in_dns: false`.
//!
//! **Architecture invariant:** membership is advisory. It feeds the cluster page and the web
//! edge's choice of ingestor; no write path waits on it.

mod limits;

pub use limits::NodeLimits;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dash_bus::{Bus, BusError, Heartbeats};
use dash_discovery::PeerSet;
use dash_domain::{NodeHeartbeat, NodeLoad, format_ms, now_ms};
use dash_task::{StopSignal, StoppableTask};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often a node says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Silence after which a node is down.
pub const DOWN_AFTER: Duration = Duration::from_secs(3);
/// How often silence is checked, so "down" shows at most this long after [`DOWN_AFTER`].
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// A node down this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// One node as the cluster page and `/api/cluster` show it: its last heartbeat, and what this
/// node makes of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    #[serde(flatten)]
    pub heartbeat: NodeHeartbeat,
    /// `up` or `down` from heartbeats; `unreachable` for an address DNS lists that never beat.
    pub status: &'static str,
    /// RFC 3339; empty for a node never heard from.
    pub last_seen: String,
    pub this_node: bool,
    /// Whether DNS lists this node's address; `None` without a cluster DNS query.
    pub in_dns: Option<bool>,
}

/// What heartbeats say of the node at one address, for choosing peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHealth {
    pub up: bool,
    pub same_region: bool,
}

/// The IP a heartbeat's `addr` names, if it names a routable one.
fn heartbeat_ip(heartbeat: &NodeHeartbeat) -> Option<IpAddr> {
    let addr: SocketAddr = heartbeat.addr.parse().ok()?;
    (!addr.ip().is_unspecified()).then_some(addr.ip())
}

struct Seen {
    heartbeat: NodeHeartbeat,
    at: Instant,
    at_ms: i64,
    up: bool,
}

/// The membership view; cheap to clone.
#[derive(Clone)]
pub struct Membership {
    me: Arc<NodeHeartbeat>,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    /// The addresses `DNS_CLUSTER_QUERY` resolves to, when it is set.
    dns: Option<watch::Receiver<PeerSet>>,
}

impl Membership {
    fn new(me: NodeHeartbeat, dns: Option<watch::Receiver<PeerSet>>) -> Self {
        Self { me: Arc::new(me), seen: Arc::default(), dns }
    }

    /// Every node heard from (this one first), then by role and name; then the addresses DNS
    /// lists that no heartbeat came from.
    pub fn members(&self) -> Vec<Member> {
        let dns = self.dns.as_ref().map(|rx| rx.borrow().clone());
        let seen = self.seen.lock();
        let mut members: Vec<Member> = seen
            .values()
            .map(|s| Member {
                heartbeat: s.heartbeat.clone(),
                status: if s.up { "up" } else { "down" },
                last_seen: format_ms(s.at_ms),
                this_node: s.heartbeat.node == self.me.node,
                in_dns: dns.as_ref().map(|set| heartbeat_ip(&s.heartbeat).is_some_and(|ip| set.contains(ip))),
            })
            .collect();
        drop(seen);
        let silent: Vec<Member> = dns
            .iter()
            .flat_map(|set| set.addrs.iter())
            .filter(|ip| !members.iter().any(|m| heartbeat_ip(&m.heartbeat) == Some(**ip)))
            .map(|ip| Member {
                heartbeat: NodeHeartbeat {
                    node: ip.to_string(),
                    role: "unknown".into(),
                    region: String::new(),
                    addr: ip.to_string(),
                    version: String::new(),
                    started_at: String::new(),
                    load: None,
                },
                status: "unreachable",
                last_seen: String::new(),
                this_node: false,
                in_dns: Some(true),
            })
            .collect();
        members.sort_by(|a, b| {
            (!a.this_node, &a.heartbeat.role, &a.heartbeat.node).cmp(&(
                !b.this_node,
                &b.heartbeat.role,
                &b.heartbeat.node,
            ))
        });
        members.extend(silent);
        members
    }

    /// What heartbeats say of the `role` node at `ip`; `None` when none came from there.
    pub fn peer(&self, ip: IpAddr, role: &str) -> Option<PeerHealth> {
        let seen = self.seen.lock();
        seen.values().filter(|s| s.heartbeat.role == role && heartbeat_ip(&s.heartbeat) == Some(ip)).fold(
            None,
            |found: Option<PeerHealth>, s| {
                let this = PeerHealth { up: s.up, same_region: s.heartbeat.region == self.me.region };
                // A restarted node may linger under its old id: the live entry wins.
                Some(match found {
                    Some(other) if other.up && !this.up => other,
                    _ => this,
                })
            },
        )
    }

    /// The routable addresses of every `role` node heard from, up or down (a node is down to
    /// membership while the bus is, too; choosing among them is the caller's business).
    pub fn known_addrs(&self, role: &str) -> Vec<SocketAddr> {
        let seen = self.seen.lock();
        let mut addrs: Vec<SocketAddr> = seen
            .values()
            .filter(|s| s.heartbeat.role == role)
            .filter_map(|s| s.heartbeat.addr.parse::<SocketAddr>().ok().filter(|a| !a.ip().is_unspecified()))
            .collect();
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// A heartbeat arrived (or this node's own tick).
    fn observe(&self, heartbeat: NodeHeartbeat) {
        let mut seen = self.seen.lock();
        let now = (Instant::now(), now_ms());
        match seen.get_mut(&heartbeat.node) {
            Some(entry) => {
                if !entry.up {
                    tracing::info!(event = "node-up", node = %heartbeat.node, role = %heartbeat.role, region = %heartbeat.region, "node up again");
                }
                entry.heartbeat = heartbeat;
                (entry.at, entry.at_ms, entry.up) = (now.0, now.1, true);
            }
            None => {
                tracing::info!(event = "node-up", node = %heartbeat.node, role = %heartbeat.role, region = %heartbeat.region, "node joined");
                seen.insert(heartbeat.node.clone(), Seen { heartbeat, at: now.0, at_ms: now.1, up: true });
            }
        }
    }

    /// Marks silent nodes down and forgets long-gone ones.
    fn sweep(&self) {
        let mut seen = self.seen.lock();
        for entry in seen.values_mut() {
            if entry.up && entry.at.elapsed() > DOWN_AFTER {
                entry.up = false;
                metrics::counter!("dash_cluster_node_down_total").increment(1);
                tracing::warn!(event = "node-down", node = %entry.heartbeat.node, role = %entry.heartbeat.role, silent_ms = entry.at.elapsed().as_millis() as u64, "node down");
            }
        }
        seen.retain(|_, s| s.up || s.at.elapsed() < FORGET_AFTER);
        let up = seen.values().filter(|s| s.up).count();
        metrics::gauge!("dash_cluster_nodes_up").set(up as f64);
    }
}

/// The heartbeat task's handle; join it on shutdown.
pub type MembershipTask = StoppableTask;

/// Starts publishing `me` every second and listening to everyone's heartbeats; `dns`, when
/// given, is the cluster's DNS view to check heartbeats against.
pub async fn start(
    bus: &Bus,
    me: NodeHeartbeat,
    dns: Option<watch::Receiver<PeerSet>>,
    load: LoadSource,
) -> Result<(Membership, MembershipTask), BusError> {
    let heartbeats = bus.heartbeats().await?;
    let membership = Membership::new(me, dns);
    let (bus, view) = (bus.clone(), membership.clone());
    let task = StoppableTask::spawn(|stop| run(bus, heartbeats, view, load, stop));
    Ok((membership, task))
}

/// What this node's heartbeat says of its load, read at each beat (the round trip through the
/// bus is filled in by the heartbeat loop itself).
pub type LoadSource = Arc<dyn Fn() -> NodeLoad + Send + Sync>;

async fn run(bus: Bus, mut heartbeats: Heartbeats, membership: Membership, load: LoadSource, stop: StopSignal) {
    let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut listening = true;
    // This node's own heartbeats, timed from publication until each comes back through NATS:
    // the pub/sub latency the node sees, on one clock (no skew between machines enters it).
    let mut echoes = Echoes::new(bus.kind() == "nats");
    loop {
        tokio::select! {
            _ = beat.tick() => {
                let mut beat = (*membership.me).clone();
                let mut figures = load();
                figures.bus_round_trip_ms = echoes.last.map(|d| d.as_secs_f64() * 1000.0);
                beat.load = Some(figures);
                // This node is up as long as it runs, whether or not the bus carries its beat.
                membership.observe(beat.clone());
                echoes.sent(bus.is_healthy());
                bus.publish_heartbeat(&beat).await;
            }
            _ = sweep.tick() => membership.sweep(),
            heartbeat = heartbeats.recv(), if listening => match heartbeat {
                Ok(heartbeat) => {
                    if heartbeat.node == membership.me.node && heartbeat.started_at == membership.me.started_at {
                        echoes.came_back();
                    }
                    membership.observe(heartbeat)
                }
                Err(err) => {
                    tracing::warn!(error = %err, "heartbeats ended; membership shows this node only");
                    listening = false;
                }
            },
            () = stop.cancelled() => return,
        }
    }
}

/// This node's heartbeats on their way through the broker, oldest first. A publisher's messages
/// reach a subscriber in the order sent, so each one that comes back is the oldest awaited.
struct Echoes {
    timed: bool,
    awaited: std::collections::VecDeque<Instant>,
    /// The last round trip (or wait given up).
    last: Option<Duration>,
}

/// Beats awaited at most; past it the oldest is given up and recorded as the time it waited, so
/// a broker slower than the beat shows as slow rather than not at all.
const ECHOES_AWAITED: usize = 8;

impl Echoes {
    fn new(timed: bool) -> Self {
        Self { timed, awaited: std::collections::VecDeque::new(), last: None }
    }

    /// A beat is published; while the bus is down nothing goes out, and what was on its way when
    /// it went down may never come back, so the queue starts again. Returns the wait of a beat
    /// given up, which is also recorded.
    fn sent(&mut self, connected: bool) -> Option<Duration> {
        if !self.timed {
            return None;
        }
        if !connected {
            self.awaited.clear();
            return None;
        }
        let given_up = match self.awaited.len() {
            ECHOES_AWAITED => self.awaited.pop_front().map(Self::record),
            _ => None,
        };
        self.awaited.push_back(Instant::now());
        self.last = given_up.or(self.last);
        given_up
    }

    /// One of this node's beats came back: its round trip, also recorded.
    fn came_back(&mut self) -> Option<Duration> {
        let waited = self.awaited.pop_front().map(Self::record);
        self.last = waited.or(self.last);
        waited
    }

    fn record(sent: Instant) -> Duration {
        let waited = sent.elapsed();
        metrics::histogram!("dash_bus_round_trip_seconds").record(waited.as_secs_f64());
        waited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_load() -> LoadSource {
        Arc::new(NodeLoad::default)
    }

    fn heartbeat(node: &str, role: &str) -> NodeHeartbeat {
        heartbeat_from(node, role, "127.0.0.1:1")
    }

    fn heartbeat_from(node: &str, role: &str, addr: &str) -> NodeHeartbeat {
        NodeHeartbeat {
            node: node.into(),
            role: role.into(),
            region: "local".into(),
            addr: addr.into(),
            version: "0".into(),
            started_at: format_ms(0),
            load: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_echo_is_timed_from_its_own_beat_and_a_slow_broker_shows_slow() {
        let mut echoes = Echoes::new(true);
        // A broker 2.5 s behind: each echo arrives after two more beats went out.
        for _ in 0..3 {
            assert_eq!(echoes.sent(true), None);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(echoes.came_back(), Some(Duration::from_millis(3_500)), "timed from the first beat, not the last");
        assert_eq!(echoes.came_back(), Some(Duration::from_millis(2_500)));
        // Echoes that never come: past the bound the oldest is given up as the time it waited.
        let mut echoes = Echoes::new(true);
        for _ in 0..ECHOES_AWAITED {
            echoes.sent(true);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(echoes.sent(true), Some(Duration::from_secs(8)));
        // The bus goes down: what was on its way is forgotten.
        assert_eq!(echoes.sent(false), None);
        assert_eq!(echoes.came_back(), None);
        assert_eq!(Echoes::new(false).sent(true), None, "the embedded bus is not timed");
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_go_down_after_three_silent_seconds_and_come_back() {
        let bus = Bus::in_process();
        let (membership, task) = start(&bus, heartbeat("web-1", "web"), None, no_load()).await.unwrap();
        bus.publish_heartbeat(&heartbeat("ing-1", "ingestor")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let members = membership.members();
        assert_eq!(members.len(), 2);
        assert!(members[0].this_node && members[0].heartbeat.node == "web-1", "{members:?}");
        assert_eq!(members[1].status, "up");

        // ing-1 falls silent; web-1 keeps beating.
        tokio::time::sleep(Duration::from_millis(2_800)).await;
        assert_eq!(membership.members()[1].status, "up", "not down before 3 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let members = membership.members();
        assert_eq!((members[0].status, members[1].status), ("up", "down"), "{members:?}");

        bus.publish_heartbeat(&heartbeat("ing-1", "ingestor")).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(membership.members()[1].status, "up");
        task.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn dns_and_heartbeats_are_checked_against_each_other() {
        let bus = Bus::in_process();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (dns_tx, dns_rx) =
            watch::channel(PeerSet { addrs: vec![ip("127.0.0.2"), ip("127.0.0.3")], resolved: true, error: None });
        let (membership, task) =
            start(&bus, heartbeat_from("web-1", "web", "127.0.0.2:8080"), Some(dns_rx), no_load()).await.unwrap();
        bus.publish_heartbeat(&heartbeat_from("ing-9", "ingestor", "127.0.0.9:8080")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;

        let members = membership.members();
        let by_node = |node: &str| members.iter().find(|m| m.heartbeat.node == node).cloned().unwrap();
        assert_eq!((by_node("web-1").status, by_node("web-1").in_dns), ("up", Some(true)));
        assert_eq!((by_node("ing-9").status, by_node("ing-9").in_dns), ("up", Some(false)), "beats, not in DNS");
        assert_eq!((by_node("127.0.0.3").status, by_node("127.0.0.3").in_dns), ("unreachable", Some(true)));
        assert_eq!(members.len(), 3);

        assert_eq!(membership.peer(ip("127.0.0.9"), "ingestor"), Some(PeerHealth { up: true, same_region: true }));
        assert_eq!(membership.peer(ip("127.0.0.9"), "web"), None);
        assert_eq!(membership.known_addrs("ingestor"), vec!["127.0.0.9:8080".parse::<SocketAddr>().unwrap()]);

        dns_tx.send_modify(|set| set.addrs.push(ip("127.0.0.9")));
        assert_eq!(membership.members().iter().filter(|m| m.in_dns == Some(true)).count(), 3);
        task.shutdown().await;
    }
}
