//! Open `/live` sessions per client: each client (by the address [`Client`](crate::client::Client)
//! resolves, IPv6 by /64; behind a web edge or a trusted proxy, the real client) may hold at most
//! `max_per_client` at once. Past it an upgrade gets 503 with `Retry-After`, so one address cannot
//! take the server's connection cap (which sessions count against) from everyone else. A session
//! whose client is unknown counts against the cap only.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::ApiError;
use crate::client::client_key;

/// How long a refused client is asked to wait.
const RETRY_AFTER_SECS: u64 = 5;

pub(crate) struct LiveSessions {
    max_per_client: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One open session's place in its client's count; given back when dropped.
pub(crate) struct SessionPlace {
    sessions: Arc<LiveSessions>,
    client: Option<IpAddr>,
}

impl LiveSessions {
    pub(crate) fn new(max_per_client: usize) -> Arc<Self> {
        let max_per_client = u32::try_from(max_per_client).unwrap_or(u32::MAX).max(1);
        Arc::new(Self { max_per_client, open: Mutex::new(HashMap::new()) })
    }

    /// A place for one more session of `client`, or 503 once it holds its share.
    pub(crate) fn take(self: &Arc<Self>, client: Option<IpAddr>) -> Result<SessionPlace, ApiError> {
        let client = client.map(client_key);
        if let Some(ip) = client {
            let mut open = self.open.lock().expect("live sessions lock");
            let count = open.entry(ip).or_insert(0);
            if *count >= self.max_per_client {
                metrics::counter!("dash_live_refused_total").increment(1);
                return Err(ApiError::unavailable(
                    "too_many_live_sessions",
                    format!(
                        "this address holds {} live sessions already; close one or retry later",
                        self.max_per_client
                    ),
                    RETRY_AFTER_SECS,
                ));
            }
            *count += 1;
        }
        Ok(SessionPlace { sessions: self.clone(), client })
    }
}

impl Drop for SessionPlace {
    fn drop(&mut self) {
        let Some(ip) = self.client else { return };
        let mut open = self.sessions.open.lock().expect("live sessions lock");
        if let Some(count) = open.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_its_share_and_gets_it_back() {
        let sessions = LiveSessions::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let first = sessions.take(Some(a)).unwrap();
        let _second = sessions.take(Some(a)).unwrap();
        let refused = sessions.take(Some(a)).err().unwrap();
        assert_eq!((refused.status.as_u16(), refused.code), (503, "too_many_live_sessions"));
        assert!(sessions.take(Some("10.0.0.2".parse().unwrap())).is_ok(), "another client");
        assert!(sessions.take(Some("2001:db8::1".parse().unwrap())).is_ok());
        drop(first);
        assert!(sessions.take(Some(a)).is_ok(), "given back when a session ends");
        assert!(sessions.take(None).is_ok(), "an unknown client counts against the cap only");
    }
}
