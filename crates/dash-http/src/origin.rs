//! Cross-site request forgery: a page on another origin (another site, or another port of this
//! host) must not change anything here, nor open `/live`, through the user's browser, with or
//! without an admin token. Browsers say where a request comes from (`Origin` on every
//! state-changing request and every WebSocket, `Sec-Fetch-Site` on all of them); a request that
//! names another origin is refused with 403. Clients that are not browsers (curl, scripts, the
//! CLI) send neither and pass. State-changing API requests must also carry JSON (a cross-site
//! HTML form can only send form or plain-text bodies).

use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::ApiError;

/// Whether a browser says this request comes from another origin than the one it is sent to.
pub(crate) fn is_cross_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return false };
    let Ok(origin) = origin.to_str() else { return true };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else { return true };
    let same = |scheme: &str| {
        origin.len() == scheme.len() + host.len()
            && origin[..scheme.len()].eq_ignore_ascii_case(scheme)
            && origin[scheme.len()..].eq_ignore_ascii_case(host)
    };
    !(same("http://") || same("https://"))
}

pub(crate) fn cross_origin_refused() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "cross_origin_refused",
        "this request comes from a page on another origin; Dash does not act on it",
    )
}

/// For the API: every method but GET and HEAD must come from this origin (or from no browser)
/// and, when it has a body, say it is JSON.
pub(crate) async fn same_origin_writes(request: Request, next: Next) -> Result<Response, ApiError> {
    let method = request.method();
    if method == Method::GET || method == Method::HEAD || method == Method::OPTIONS {
        return Ok(next.run(request).await);
    }
    if is_cross_origin(request.headers()) {
        return Err(cross_origin_refused());
    }
    if let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
        let essence = content_type.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let json = essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"));
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the request body as JSON (Content-Type: application/json)",
            ));
        }
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn only_this_origin_or_no_browser_passes() {
        assert!(!is_cross_origin(&headers(&[("host", "127.0.0.1:8080")])), "curl");
        assert!(!is_cross_origin(&headers(&[("host", "dash.example"), ("origin", "https://dash.example")])));
        assert!(!is_cross_origin(&headers(&[("host", "Dash.Example:80"), ("origin", "http://dash.example:80")])));
        assert!(!is_cross_origin(&headers(&[
            ("host", "h"),
            ("sec-fetch-site", "same-origin"),
            ("origin", "http://h")
        ])));
        assert!(!is_cross_origin(&headers(&[("host", "h"), ("sec-fetch-site", "none")])));
        for (origin, site) in [
            ("http://127.0.0.1:9999", "same-site"),
            ("http://evil.example", "cross-site"),
            ("null", "cross-site"),
            ("http://127.0.0.1:8080.evil.example", "cross-site"),
        ] {
            assert!(is_cross_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", origin)])), "{origin}");
            assert!(is_cross_origin(&headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", site)])), "{site}");
        }
    }
}
