//! A TCP proxy the test controls, to cut a connection to a shared server without stopping it.

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct TcpProxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let acceptor = tokio::spawn({
            let (cut, links) = (cut.clone(), links.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        continue; // dropped: the client sees the connection closed at once
                    }
                    let link = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    links.lock().push(link);
                }
            }
        });
        Self { addr, cut, links, acceptor }
    }

    /// A proxy in front of the server `url` names, and `url` rewritten to go through it.
    pub async fn in_front_of(url: &str) -> (Self, String) {
        let authority = url.split_once("://").unwrap().1.split('/').next().unwrap();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
        let upstream: SocketAddr = tokio::net::lookup_host(host_port).await.unwrap().next().unwrap();
        let proxy = Self::start(upstream).await;
        let proxied = url.replacen(host_port, &proxy.addr.to_string(), 1);
        assert_ne!(proxied, url, "the database URL names a host and port: {url}");
        (proxy, proxied)
    }

    /// Breaks every open connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for link in self.links.lock().drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        for link in self.links.lock().drain(..) {
            link.abort();
        }
    }
}
