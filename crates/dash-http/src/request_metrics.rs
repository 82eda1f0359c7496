//! Requests by route and status, with their latency: `dash_http_requests_total{route, method,
//! status}` and `dash_http_request_duration_seconds{route}`. The route is the pattern that
//! matched (`/webhooks/{pipeline}`), never the path sent, and a method outside HTTP's own is
//! `other`, so no client can grow the set of series.
//!
//! Every request records both, so the handles are registered once per series and kept here:
//! a lookup by route is a read lock and a hash of the pattern, where the recorder's own would
//! build and hash a labelled key (and allocate its labels) for each of the two.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Counter, Histogram};
use parking_lot::{Mutex, RwLock};

/// The series' handles, by route pattern (a fixed set: the router's own).
#[derive(Default)]
pub(crate) struct RequestMetrics {
    routes: RwLock<HashMap<Arc<str>, Arc<RouteMetrics>>>,
}

struct RouteMetrics {
    route: Arc<str>,
    duration: Histogram,
    /// Counters by (method, status): the few a route answers with.
    requests: Mutex<Vec<(&'static str, u16, Counter)>>,
}

impl RequestMetrics {
    fn route(&self, route: &str) -> Arc<RouteMetrics> {
        if let Some(found) = self.routes.read().get(route) {
            return found.clone();
        }
        let route: Arc<str> = Arc::from(route);
        let mut routes = self.routes.write();
        routes
            .entry(route.clone())
            .or_insert_with(|| {
                Arc::new(RouteMetrics {
                    duration: metrics::histogram!("dash_http_request_duration_seconds", "route" => route.to_string()),
                    requests: Mutex::default(),
                    route,
                })
            })
            .clone()
    }
}

impl RouteMetrics {
    fn count(&self, method: &'static str, status: u16) {
        let mut requests = self.requests.lock();
        if let Some((_, _, counter)) = requests.iter().find(|(m, s, _)| *m == method && *s == status) {
            counter.increment(1);
            return;
        }
        let counter = metrics::counter!("dash_http_requests_total", "route" => self.route.to_string(), "method" => method, "status" => status.to_string());
        counter.increment(1);
        requests.push((method, status, counter));
    }
}

pub(crate) async fn record(State(known): State<Arc<RequestMetrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
    let series = known.route(route);
    let method = method_label(request.method());
    let response = next.run(request).await;
    series.count(method, response.status().as_u16());
    series.duration.record(started.elapsed().as_secs_f64());
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
