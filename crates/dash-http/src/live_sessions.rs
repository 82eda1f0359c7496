//! Open `/live` sessions per client: each client (by the address [`Client`](crate::client::Client)
//! resolves, IPv6 by /64; behind a web edge or a trusted proxy, the real client) may hold at most
//! `max_per_client` at once. Past it an upgrade gets 503 with `Retry-After`, so one address cannot
//! take the server's connection cap (which sessions count against) from everyone else. A session
//! whose client is unknown counts against the cap only.

use std::net::IpAddr;
use std::sync::Arc;

use crate::ApiError;
use crate::client_counts::{ClientCounts, ClientPlace};

/// How long a refused client is asked to wait.
const RETRY_AFTER_SECS: u64 = 5;

pub(crate) struct LiveSessions {
    counts: Arc<ClientCounts>,
}

/// One open session's place in its client's count (none for an unknown client); given back
/// when dropped.
pub(crate) struct SessionPlace {
    _place: Option<ClientPlace>,
}

impl LiveSessions {
    pub(crate) fn new(max_per_client: usize) -> Arc<Self> {
        Arc::new(Self { counts: ClientCounts::new(max_per_client) })
    }

    /// A place for one more session of `client`, or 503 once it holds its share.
    pub(crate) fn take(&self, client: Option<IpAddr>) -> Result<SessionPlace, ApiError> {
        let Some(client) = client else { return Ok(SessionPlace { _place: None }) };
        match self.counts.take(client) {
            Some(place) => Ok(SessionPlace { _place: Some(place) }),
            None => {
                metrics::counter!("dash_live_refused_total").increment(1);
                Err(ApiError::unavailable(
                    "too_many_live_sessions",
                    format!("this address holds {} live sessions already; close one or retry later", self.counts.max()),
                    RETRY_AFTER_SECS,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_its_share_a_client_is_told_503_and_an_unknown_one_is_not_counted() {
        let sessions = LiveSessions::new(1);
        let _held = sessions.take(Some("10.0.0.1".parse().unwrap())).unwrap();
        let refused = sessions.take(Some("10.0.0.1".parse().unwrap())).err().unwrap();
        assert_eq!((refused.status.as_u16(), refused.code), (503, "too_many_live_sessions"));
        assert!(sessions.take(None).is_ok() && sessions.take(None).is_ok(), "the cap only");
    }
}
