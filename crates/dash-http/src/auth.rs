//! Who may read: with `DASH_ADMIN_TOKEN` set, the API, the dashboard and `/live` need the token
//! as `Authorization: Bearer …` or a login session cookie (browsers cannot put headers on a
//! WebSocket or a link). Without it everything is open, for local use.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use dash_signature::SessionKey;
use subtle::ConstantTimeEq;

use crate::HttpLimits;

/// Name of the session cookie.
pub(crate) const SESSION_COOKIE: &str = "dash_session";
/// How long a login lasts.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The token of an `Authorization: Bearer <token>` header, if the request has one.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim)
}

/// The value of one cookie of the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

fn now_secs() -> i64 {
    dash_domain::now_ms() / 1000
}

/// Whether `presented` is the admin token (constant time).
pub(crate) fn is_admin_token(presented: &str, expected: &str) -> bool {
    bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// Whether the request may read: no admin token configured, the Bearer token, or a live session.
pub(crate) fn authorized(headers: &HeaderMap, limits: &HttpLimits) -> bool {
    let Some(expected) = &limits.admin_token else { return true };
    bearer_token(headers).is_some_and(|presented| is_admin_token(presented, expected)) || has_session(headers, limits)
}

/// Whether the request carries a session cookie issued under the current admin token.
pub(crate) fn has_session(headers: &HeaderMap, limits: &HttpLimits) -> bool {
    let Some(expected) = &limits.admin_token else { return false };
    cookie(headers, SESSION_COOKIE).is_some_and(|value| SessionKey::new(expected).verify(value, now_secs()))
}

/// The `Set-Cookie` that starts a session. `Secure` when the client reached us over HTTPS
/// (a TLS-terminating proxy says so in `X-Forwarded-Proto`).
pub(crate) fn start_session(admin_token: &str, headers: &HeaderMap) -> HeaderValue {
    let ttl = SESSION_TTL.as_secs();
    let value = SessionKey::new(admin_token).issue(now_secs() + ttl as i64);
    let secure = headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/; Max-Age={ttl}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&cookie).expect("session cookies are ASCII")
}

/// The `Set-Cookie` that ends a session.
pub(crate) fn end_session() -> HeaderValue {
    HeaderValue::from_static("dash_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(token: Option<&str>) -> HttpLimits {
        HttpLimits {
            max_body: 1,
            inflight_body_bytes: 1,
            admin_token: token.map(str::to_owned),
            public_url: None,
            max_live_per_client: 1,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn open_without_a_token_and_closed_without_credentials() {
        assert!(authorized(&headers(&[]), &limits(None)));
        assert!(!authorized(&headers(&[]), &limits(Some("t0k"))));
        assert!(!authorized(&headers(&[("authorization", "Bearer nope")]), &limits(Some("t0k"))));
        assert!(authorized(&headers(&[("authorization", "Bearer t0k")]), &limits(Some("t0k"))));
    }

    #[test]
    fn a_session_cookie_from_login_is_accepted_among_other_cookies() {
        let set = start_session("t0k", &headers(&[("x-forwarded-proto", "https")]));
        let set = set.to_str().unwrap();
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Secure"), "{set}");
        let pair = set.split(';').next().unwrap();
        let cookie = format!("theme=dark; {pair}; other=1");
        assert!(authorized(&headers(&[("cookie", &cookie)]), &limits(Some("t0k"))));
        assert!(!authorized(&headers(&[("cookie", &cookie)]), &limits(Some("rotated"))));
        assert!(!authorized(&headers(&[("cookie", "dash_session=1.abc")]), &limits(Some("t0k"))));
    }
}
