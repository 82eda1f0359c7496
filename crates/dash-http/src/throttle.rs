//! Failed authentication, throttled per client: a wrong webhook signature or token, a wrong
//! admin token (API, `/live`, login form). The client is the one
//! [`Client`](crate::client::Client) resolves (behind a web edge, the sender, never the edge),
//! counted by its address, or its /64 for IPv6, and by what it tried to reach
//! ([`Scope`]): the admin surfaces together, each pipeline on its own. Each failure takes a cell
//! from that budget ([governor]: [`FAILURES_BURST`] at once, refilled at [`FAILURES_PER_SEC`]);
//! once it is spent, until it refills, the address gets 429 with `Retry-After`: for the admin
//! token, on every attempt, before the token is looked at; for a pipeline's webhooks, on every
//! failed attempt only, so a correct delivery is never refused (providers send every
//! pipeline's deliveries from shared address pools, where anyone can point a webhook with a
//! wrong secret at any pipeline). Pipelines have scopes of their own for the same reason: a
//! wrong secret on one must not stop the provider's deliveries to the others.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};

use crate::ApiError;
use crate::client::client_key;

/// Failures an address may make at once, per scope.
pub const FAILURES_BURST: u32 = 30;
/// Failures per second an address may keep making, per scope.
pub const FAILURES_PER_SEC: u32 = 5;
/// Keys remembered at most (blocked ones and the limiter's own state); past it the expired
/// entries are dropped.
const ADDRESSES_MAX: usize = 10_000;

/// What a client tried to authenticate for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope<'a> {
    /// The admin token: API, `/live`, login form.
    Admin,
    /// One pipeline's webhooks, by the id or name the request named.
    Pipeline(&'a str),
}

impl Scope<'_> {
    fn id(self) -> u64 {
        match self {
            Self::Admin => 0,
            Self::Pipeline(pipeline) => {
                // A fixed hasher: the same pipeline has the same scope on every call.
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                pipeline.hash(&mut hasher);
                hasher.finish() | 1
            }
        }
    }
}

/// A client address (or /64) in a scope.
type Key = (IpAddr, u64);
type Keyed = RateLimiter<Key, governor::state::keyed::HashMapStateStore<Key>, DefaultClock>;

pub struct AuthThrottle {
    limiter: Keyed,
    blocked: Mutex<HashMap<Key, Instant>>,
    /// Whether any key was ever blocked: until then `admit` takes no lock.
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

fn key(peer: Option<IpAddr>, scope: Scope<'_>) -> Option<Key> {
    Some((client_key(peer?), scope.id()))
}

impl AuthThrottle {
    /// Before credentials are checked: 429 while the client is blocked in this scope.
    pub(crate) fn admit(&self, peer: Option<IpAddr>, scope: Scope<'_>) -> Result<(), ApiError> {
        if !self.any_blocked.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let Some(key) = key(peer, scope) else { return Ok(()) };
        let blocked = self.blocked.lock();
        match blocked.get(&key) {
            Some(until) if *until > Instant::now() => Err(too_many(*until - Instant::now())),
            _ => Ok(()),
        }
    }

    /// After credentials failed: the answer to send, `refusal` or 429 once the client's budget
    /// of failures in this scope is spent.
    pub(crate) fn failed(&self, peer: Option<IpAddr>, scope: Scope<'_>, refusal: ApiError) -> ApiError {
        self.record_failure(peer, scope).unwrap_or(refusal)
    }

    /// Counts a failure; the 429 to answer instead once the budget is spent.
    pub(crate) fn record_failure(&self, peer: Option<IpAddr>, scope: Scope<'_>) -> Option<ApiError> {
        let key = key(peer, scope)?;
        metrics::counter!("dash_auth_failures_total").increment(1);
        if self.limiter.len() > ADDRESSES_MAX {
            self.limiter.retain_recent();
        }
        match self.limiter.check_key(&key) {
            Ok(()) => None,
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now()).max(Duration::from_secs(1));
                Some(self.block(peer, scope, wait))
            }
        }
    }

    /// Blocks the client in this scope for `wait`; the 429 to answer.
    fn block(&self, peer: Option<IpAddr>, scope: Scope<'_>, wait: Duration) -> ApiError {
        let Some(key) = key(peer, scope) else { return too_many(wait) };
        let mut blocked = self.blocked.lock();
        if blocked.len() > ADDRESSES_MAX {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
        }
        blocked.insert(key, Instant::now() + wait);
        self.any_blocked.store(true, std::sync::atomic::Ordering::Release);
        metrics::counter!("dash_auth_throttled_total").increment(1);
        tracing::warn!(ip = %key.0, ?scope, wait_ms = wait.as_millis() as u64, "too many failed authentications; throttled");
        too_many(wait)
    }
}

/// The code of the 429 that [`AuthThrottle`] answers.
const THROTTLED_CODE: &str = "too_many_failed_attempts";

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
            assert_eq!(throttle.failed(Some(guesser), Scope::Admin, refusal()).status, StatusCode::UNAUTHORIZED);
        }
        let throttled = throttle.failed(Some(guesser), Scope::Admin, refusal());
        assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(throttled.retry_after_secs.is_some_and(|s| s >= 1));
        assert!(throttle.admit(Some(guesser), Scope::Admin).is_err());
        assert!(throttle.admit(Some(other), Scope::Admin).is_ok());
        assert_eq!(throttle.failed(Some(other), Scope::Admin, refusal()).status, StatusCode::UNAUTHORIZED);
        assert!(throttle.admit(None, Scope::Admin).is_ok());
    }

    #[test]
    fn an_ipv6_guesser_is_blocked_across_its_64() {
        let throttle = AuthThrottle::default();
        let refusal = || ApiError::unauthorized("invalid_token", "no");
        for i in 0..=FAILURES_BURST {
            let ip: IpAddr = format!("2001:db8:0:1::{:x}", i + 1).parse().unwrap();
            throttle.failed(Some(ip), Scope::Admin, refusal());
        }
        assert!(throttle.admit(Some("2001:db8:0:1:abcd::1".parse().unwrap()), Scope::Admin).is_err());
        assert!(throttle.admit(Some("2001:db8:0:2::1".parse().unwrap()), Scope::Admin).is_ok());
    }

    #[test]
    fn a_wrong_secret_on_one_pipeline_leaves_the_senders_other_pipelines_alone() {
        let throttle = AuthThrottle::default();
        let provider: IpAddr = "192.30.252.1".parse().unwrap();
        let refusal = || ApiError::unauthorized("invalid_signature", "no");
        for _ in 0..=FAILURES_BURST {
            throttle.failed(Some(provider), Scope::Pipeline("misconfigured"), refusal());
        }
        assert!(throttle.admit(Some(provider), Scope::Pipeline("misconfigured")).is_err());
        assert!(throttle.admit(Some(provider), Scope::Pipeline("orders")).is_ok());
        assert!(throttle.admit(Some(provider), Scope::Admin).is_ok());
    }
}
