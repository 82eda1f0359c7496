//! `TCP_NODELAY` on the PostgreSQL pool's connections.
//!
//! sqlx 0.9.0 no longer sets `TCP_NODELAY` on its sockets (upstream issue 4335, fixed after that
//! release). Without it, a large message such as a 1000-event batch's `Bind` (~220 KB) often ends
//! in a short segment that Nagle's algorithm holds back until the server's delayed ACK, ~40 ms
//! later: on loopback half of all batch statements took 50 ms instead of 12. sqlx does not hand
//! out its socket, so each new connection asks the server which client port it sees, and the
//! socket of this process with that local port and the server's port as its peer gets the
//! option. Through a proxy or NAT the ports do not match and nothing is changed. Remove this
//! module once sqlx sets the option again.

use sqlx::postgres::PgConnection;

/// Sets `TCP_NODELAY` on the socket behind `conn`; false when it was not found (a Unix socket,
/// a proxy in between, or not Linux).
pub async fn set_on(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let (client, server): (Option<i32>, Option<i32>) =
        sqlx::query_as("SELECT inet_client_port(), inet_server_port()").fetch_one(conn).await?;
    match (client.and_then(|p| u16::try_from(p).ok()), server.and_then(|p| u16::try_from(p).ok())) {
        (Some(local), Some(peer)) => Ok(with_socket(local, peer, |s| s.set_tcp_nodelay(true).is_ok()).unwrap_or(false)),
        _ => Ok(false),
    }
}

/// Runs `f` on this process's TCP socket from port `local` to port `peer`, if there is one.
#[cfg(target_os = "linux")]
fn with_socket<T>(local: u16, peer: u16, f: impl FnOnce(socket2::SockRef<'_>) -> T) -> Option<T> {
    use std::os::fd::{BorrowedFd, RawFd};

    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    for entry in entries.flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<RawFd>() else { continue };
        let is_socket =
            std::fs::read_link(entry.path()).is_ok_and(|link| link.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor is only borrowed for the socket calls below. Should another
        // thread close it meanwhile, they fail with EBADF; should the number be reused, the
        // port check below does not match and nothing is set.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let port = |addr: std::io::Result<socket2::SockAddr>| addr.ok().and_then(|a| a.as_socket()).map(|a| a.port());
        if port(socket.local_addr()) == Some(local) && port(socket.peer_addr()) == Some(peer) {
            return Some(f(socket));
        }
    }
    None
}

#[cfg(not(target_os = "linux"))]
fn with_socket<T>(_local: u16, _peer: u16, _f: impl FnOnce(socket2::SockRef<'_>) -> T) -> Option<T> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use sqlx::Connection;

    use super::*;

    #[tokio::test]
    #[ignore = "needs PostgreSQL (DASH_TEST_POSTGRES): scripts/test.sh runs it, or cargo test -- --ignored on_postgres"]
    async fn pool_connections_get_tcp_nodelay_on_postgres() {
        let admin = crate::testing::admin_url().expect("DASH_TEST_POSTGRES names the PostgreSQL server");
        if !admin.contains("127.0.0.1") && !admin.contains("localhost") {
            return; // the ports only match without a proxy in between
        }
        let store = crate::PgStore::connect(&admin, crate::PoolSizes::default()).unwrap();
        let mut conn = store.pool().acquire().await.unwrap();
        let (client, server): (i32, i32) =
            sqlx::query_as("SELECT inet_client_port(), inet_server_port()").fetch_one(&mut *conn).await.unwrap();
        let nodelay = with_socket(client as u16, server as u16, |s| s.tcp_nodelay().unwrap());
        assert_eq!(nodelay, Some(true), "the pool's connection has TCP_NODELAY");

        // A connection made without the pool does not, until asked.
        let mut plain = PgConnection::connect(&admin).await.unwrap();
        let (client, server): (i32, i32) =
            sqlx::query_as("SELECT inet_client_port(), inet_server_port()").fetch_one(&mut plain).await.unwrap();
        assert_eq!(with_socket(client as u16, server as u16, |s| s.tcp_nodelay().unwrap()), Some(false));
        assert!(set_on(&mut plain).await.unwrap());
        assert_eq!(with_socket(client as u16, server as u16, |s| s.tcp_nodelay().unwrap()), Some(true));
    }
}
