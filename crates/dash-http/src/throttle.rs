//! Failed authentication, throttled per client: a wrong webhook signature or token, a wrong
//! admin token (API, `/live`, login form). The client is the one
//! [`Client`](crate::client::Client) resolves (behind a web edge, the sender, never the edge),
//! counted by its address, or its /64 for IPv6. Each failure takes a cell from the address's
//! [governor] budget ([`FAILURES_BURST`] at once, refilled at [`FAILURES_PER_SEC`]); once it is
//! spent, every authentication attempt from that address gets 429 with `Retry-After` before its
//! credentials are even looked at, until the budget refills. Correct senders elsewhere are
//! never slowed, and a correct sender at that address only while it shares it with a guesser.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};

use crate::ApiError;
use crate::client::client_key;

/// Failures an address may make at once.
pub const FAILURES_BURST: u32 = 30;
/// Failures per second an address may keep making.
pub const FAILURES_PER_SEC: u32 = 5;
/// Addresses remembered at most (blocked ones and the limiter's own state); past it the
/// expired entries are dropped.
const ADDRESSES_MAX: usize = 10_000;

type Keyed = RateLimiter<IpAddr, governor::state::keyed::HashMapStateStore<IpAddr>, DefaultClock>;

pub struct AuthThrottle {
    limiter: Keyed,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    /// Whether any address was ever blocked: until then `admit` takes no lock.
    any_blocked: std::sync::atomic::AtomicBool,
}

impl Default for AuthThrottle {
    fn default() -> Self {
        let quota = Quota::per_second(NonZeroU32::new(FAILURES_PER_SEC).expect("non-zero"))
            .allow_burst(NonZeroU32::new(FAILURES_BURST).expect("non-zero"));
        Self {
            limiter: RateLimiter::hashmap(quota),
            blocked: Mutex::new(HashMap::new()),
            any_blocked: Default::default(),
        }
    }
}

impl AuthThrottle {
    /// Before credentials are checked: 429 while the address is blocked.
    pub(crate) fn admit(&self, peer: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(ip) = peer.map(client_key) else { return Ok(()) };
        if !self.any_blocked.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let blocked = self.blocked.lock().expect("throttle lock");
        match blocked.get(&ip) {
            Some(until) if *until > Instant::now() => Err(too_many(*until - Instant::now())),
            _ => Ok(()),
        }
    }

    /// After credentials failed: the answer to send, `refusal` or 429 once the address's budget
    /// of failures is spent.
    pub(crate) fn failed(&self, peer: Option<IpAddr>, refusal: ApiError) -> ApiError {
        self.record_failure(peer).unwrap_or(refusal)
    }

    /// Counts a failure; the 429 to answer instead once the address's budget is spent.
    pub(crate) fn record_failure(&self, peer: Option<IpAddr>) -> Option<ApiError> {
        let ip = client_key(peer?);
        metrics::counter!("dash_auth_failures_total").increment(1);
        if self.limiter.len() > ADDRESSES_MAX {
            self.limiter.retain_recent();
        }
        match self.limiter.check_key(&ip) {
            Ok(()) => None,
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now()).max(Duration::from_secs(1));
                Some(self.block(Some(ip), wait))
            }
        }
    }

    /// Blocks the address for `wait` (a web edge does so when an ingestor throttled the client,
    /// so the client's next attempts stop at the edge); the 429 to answer.
    pub(crate) fn block(&self, peer: Option<IpAddr>, wait: Duration) -> ApiError {
        let Some(ip) = peer.map(client_key) else { return too_many(wait) };
        let mut blocked = self.blocked.lock().expect("throttle lock");
        if blocked.len() > ADDRESSES_MAX {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
        }
        blocked.insert(ip, Instant::now() + wait);
        self.any_blocked.store(true, std::sync::atomic::Ordering::Release);
        metrics::counter!("dash_auth_throttled_total").increment(1);
        tracing::warn!(%ip, wait_ms = wait.as_millis() as u64, "too many failed authentications; throttled");
        too_many(wait)
    }
}

/// The code of the 429 that [`AuthThrottle`] answers.
pub(crate) const THROTTLED_CODE: &str = "too_many_failed_attempts";

fn too_many(wait: Duration) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        THROTTLED_CODE,
        "too many failed authentications from this address; retry later",
    )
    .retry_after(wait.as_secs_f64().ceil().max(1.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_after_its_burst_and_others_are_not() {
        let throttle = AuthThrottle::default();
        let guesser: IpAddr = "10.0.0.9".parse().unwrap();
        let other: IpAddr = "10.0.0.10".parse().unwrap();
        let refusal = || ApiError::unauthorized("invalid_token", "no");
        for _ in 0..FAILURES_BURST {
            assert_eq!(throttle.failed(Some(guesser), refusal()).status, StatusCode::UNAUTHORIZED);
        }
        let throttled = throttle.failed(Some(guesser), refusal());
        assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(throttled.retry_after_secs.is_some_and(|s| s >= 1));
        assert!(throttle.admit(Some(guesser)).is_err());
        assert!(throttle.admit(Some(other)).is_ok());
        assert_eq!(throttle.failed(Some(other), refusal()).status, StatusCode::UNAUTHORIZED);
        assert!(throttle.admit(None).is_ok());
    }

    #[test]
    fn an_ipv6_guesser_is_blocked_across_its_64() {
        let throttle = AuthThrottle::default();
        let refusal = || ApiError::unauthorized("invalid_token", "no");
        for i in 0..=FAILURES_BURST {
            let ip: IpAddr = format!("2001:db8:0:1::{:x}", i + 1).parse().unwrap();
            throttle.failed(Some(ip), refusal());
        }
        assert!(throttle.admit(Some("2001:db8:0:1:abcd::1".parse().unwrap())).is_err());
        assert!(throttle.admit(Some("2001:db8:0:2::1".parse().unwrap())).is_ok());
    }
}
