//! A small authoritative DNS server on 127.0.0.1 (UDP) for tests: names map to addresses and
//! can change while it runs; it can also fall silent, like a name server that went away.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

#[derive(Default)]
struct Zone {
    names: Mutex<HashMap<String, Vec<IpAddr>>>,
    silent: AtomicBool,
}

/// Stops serving when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Zone>,
    task: JoinHandle<()>,
}

impl DnsServer {
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// On `addr` (port 0: any free one).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(addr).await?;
        let addr = socket.local_addr()?;
        let zone = Arc::new(Zone::default());
        let task = tokio::spawn(serve(socket, zone.clone()));
        Ok(Self { addr, zone, task })
    }

    /// Where to point `DNS_RESOLVER`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `name` now resolves to `addrs` (A for IPv4, AAAA for IPv6); an empty list removes it.
    pub fn set(&self, name: &str, addrs: Vec<IpAddr>) {
        let mut names = self.zone.names.lock();
        if addrs.is_empty() {
            names.remove(&normalize(name));
        } else {
            names.insert(normalize(name), addrs);
        }
    }

    /// While silent, queries go unanswered.
    pub fn set_silent(&self, silent: bool) {
        self.zone.silent.store(silent, Ordering::SeqCst);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

async fn serve(socket: UdpSocket, zone: Arc<Zone>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else { return };
        if zone.silent.load(Ordering::SeqCst) {
            continue;
        }
        let Ok(request) = Message::from_vec(&buf[..len]) else { continue };
        let response = answer(&zone, &request);
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, from).await;
        }
    }
}

fn answer(zone: &Zone, request: &Message) -> Message {
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.queries = request.queries.clone();
    let names = zone.names.lock();
    for query in &request.queries {
        let Some(addrs) = names.get(&normalize(&query.name().to_ascii())) else {
            response.metadata.response_code = ResponseCode::NXDomain;
            continue;
        };
        for ip in addrs {
            let wanted = match ip {
                IpAddr::V4(_) => RecordType::A,
                IpAddr::V6(_) => RecordType::AAAA,
            };
            if query.query_type() == wanted {
                response.add_answer(Record::from_rdata(query.name().clone(), 1, RData::from(*ip)));
            }
        }
    }
    response
}
