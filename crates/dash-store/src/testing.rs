//! Fresh PostgreSQL databases for tests: each test run gets its own, named `dash_test_<uuid>`.
//! The admin URL comes from `DASH_TEST_POSTGRES` (set by scripts/test.sh); without it,
//! PostgreSQL tests are skipped with a note.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// Environment variable naming a PostgreSQL server the tests may create databases on.
pub const ADMIN_URL_VAR: &str = "DASH_TEST_POSTGRES";

/// Set (by scripts/test.sh) where PostgreSQL tests must run: then a missing
/// [`ADMIN_URL_VAR`] fails them instead of skipping them.
pub const REQUIRE_VAR: &str = "DASH_TEST_REQUIRE_POSTGRES";

/// The admin URL, when PostgreSQL tests are enabled. Panics when they are required
/// ([`REQUIRE_VAR`]) and no server is named: a test that cannot run must not pass.
pub fn admin_url() -> Option<String> {
    let url = std::env::var(ADMIN_URL_VAR).ok().filter(|u| !u.is_empty());
    if url.is_none() && std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_VAR}=1 but {ADMIN_URL_VAR} names no PostgreSQL server");
    }
    url
}

/// Set (by scripts/test.sh) when the suite runs on a TimescaleDB server: the store tests then
/// check that the hypertable layout is the one in use.
pub const TIMESCALE_VAR: &str = "DASH_TEST_TIMESCALE";

/// Whether the PostgreSQL server under test is a preloaded TimescaleDB.
pub fn on_timescale() -> bool {
    std::env::var(TIMESCALE_VAR).is_ok_and(|v| v == "1")
}

/// Creates an empty database and returns its URL.
pub async fn create_database(admin_url: &str) -> Result<String, sqlx::Error> {
    let name = format!("dash_test_{}", uuid::Uuid::now_v7().simple());
    let mut admin = PgConnection::connect(admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await?;
    admin.close().await?;
    let base = admin_url.rsplit_once('/').map_or(admin_url, |(base, _)| base);
    Ok(format!("{base}/{name}"))
}

/// Drops a database made by [`create_database`], closing its connections.
pub async fn drop_database(admin_url: &str, database_url: &str) -> Result<(), sqlx::Error> {
    let Some((_, name)) = database_url.rsplit_once('/') else { return Ok(()) };
    if !name.starts_with("dash_test_") || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Ok(());
    }
    let mut admin = PgConnection::connect(admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await?;
    admin.close().await
}

/// A TCP proxy a test controls, in front of a shared server it must not stop: it can break
/// every connection at once ([`TcpProxy::cut`], what a server restart or a reset looks like) or
/// swallow their bytes while keeping them open ([`TcpProxy::stall`], what a network partition
/// looks like: nobody is told, and what was sent arrives when it heals).
pub struct TcpProxy {
    pub addr: std::net::SocketAddr,
    state: tokio::sync::watch::Sender<ProxyState>,
    links: std::sync::Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    acceptor: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyState {
    Open,
    Cut,
    Stalled,
}

impl TcpProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        use tokio::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let (state, _) = tokio::sync::watch::channel(ProxyState::Open);
        let links: std::sync::Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Default::default();
        let acceptor = tokio::spawn({
            let (state, links) = (state.clone(), links.clone());
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if *state.borrow() == ProxyState::Cut {
                        continue; // dropped: the client sees the connection closed at once
                    }
                    let state = state.subscribe();
                    let link = tokio::spawn(async move {
                        if let Ok(outbound) = TcpStream::connect(upstream).await {
                            let (client_read, client_write) = inbound.into_split();
                            let (server_read, server_write) = outbound.into_split();
                            tokio::join!(
                                relay(client_read, server_write, state.clone()),
                                relay(server_read, client_write, state)
                            );
                        }
                    });
                    let mut links = links.lock();
                    links.retain(|link| !link.is_finished());
                    links.push(link);
                }
            }
        });
        Self { addr, state, links, acceptor }
    }

    /// A proxy in front of the server `url` names, and `url` rewritten to go through it.
    pub async fn in_front_of(url: &str) -> (Self, String) {
        let authority = url.split_once("://").expect("a URL").1.split('/').next().expect("an authority");
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
        let upstream = tokio::net::lookup_host(host_port).await.expect("a resolvable host").next().expect("an address");
        let proxy = Self::start(upstream).await;
        let proxied = url.replacen(host_port, &proxy.addr.to_string(), 1);
        assert_ne!(proxied, url, "the URL names a host and port: {url}");
        (proxy, proxied)
    }

    /// Breaks every open connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.state.send_replace(ProxyState::Cut);
        for link in self.links.lock().drain(..) {
            link.abort();
        }
    }

    /// Holds every byte in both directions, on open connections and new ones alike, until
    /// [`TcpProxy::restore`]; no connection is closed.
    pub fn stall(&self) {
        self.state.send_replace(ProxyState::Stalled);
    }

    /// Lets connections through again; what a stall held is delivered.
    pub fn restore(&self) {
        self.state.send_replace(ProxyState::Open);
    }
}

/// Copies one direction of a link, holding each chunk while the proxy is stalled.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: tokio::sync::watch::Receiver<ProxyState>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if state.wait_for(|s| *s != ProxyState::Stalled).await.is_err() || n == 0 {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        for link in self.links.lock().drain(..) {
            link.abort();
        }
    }
}
