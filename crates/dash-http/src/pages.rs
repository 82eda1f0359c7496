//! The dashboard: pages and fragments rendered on the server (views in dash-web), the login
//! form, and the two static assets. Handlers load data into dash-web's view models; they hold
//! no markup of their own.

use std::fmt::Display;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use dash_domain::now_ms;
use dash_store::PipelineRecord;
use dash_web::{
    Chart, ChartRange, Chrome, EventRow, LatestEvents, NodeRow, NodeStatus, PipelinePanel, PipelineSummary,
    SendInstructions, pages,
};
use serde::Deserialize;

use crate::AppState;
use crate::auth;
use crate::client::Client;
use crate::throttle::Scope;

/// Only our own origin may load scripts, styles or open sockets; no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

pub(crate) fn router(state: AppState) -> axum::Router<AppState> {
    axum::Router::new()
        .route("/", get(overview))
        .route("/pipelines/{id}", get(pipeline))
        .route("/pipelines/{id}/panel", get(panel))
        .route("/pipelines/{id}/latest", get(latest))
        .route("/pipelines/{id}/row", get(row))
        .route("/cluster", get(cluster))
        .route("/cluster/nodes", get(cluster_nodes))
        .merge(crate::view_pages::router())
        .merge(crate::board_pages::router())
        .route_layer(middleware::from_fn_with_state(state, require_session))
        .merge(crate::board_pages::share_router())
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/assets/live.js", get(|| asset("text/javascript; charset=utf-8", dash_web::LIVE_JS)))
        .route("/assets/dash.css", get(|| asset("text/css; charset=utf-8", dash_web::DASH_CSS)))
}

/// A whole page or fragment, never cached (it is live data), under the page's CSP.
pub(crate) fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    response
}

/// Pages need a session when the admin token is set: a browser is sent to the login form and
/// comes back afterwards; a fragment request just gets 401.
async fn require_session(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if auth::authorized(request.headers(), &state.limits) {
        return next.run(request).await;
    }
    let path = request.uri().path();
    if path.ends_with("/panel")
        || path.ends_with("/latest")
        || path.ends_with("/row")
        || path.ends_with("/card")
        || path == "/cluster/nodes"
        || (request.method() == axum::http::Method::GET && path.starts_with("/boards/") && path.contains("/panels/"))
    {
        // Never an empty 4xx: the server loop takes those for the HTTP library's own.
        return html(StatusCode::UNAUTHORIZED, "<!-- sign in again -->".to_owned());
    }
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let query = serde_urlencoded::to_string([("next", target)]).unwrap_or_default();
    Redirect::to(&format!("/login?{query}")).into_response()
}

pub(crate) fn chrome(state: &AppState, headers: &HeaderMap) -> Chrome {
    Chrome {
        node: state.node.node.clone(),
        role: state.node.role.clone(),
        region: state.node.region.clone(),
        version: state.node.version.clone(),
        signed_in: auth::has_session(headers, &state.limits),
    }
}

/// Why a page could not be shown.
pub(crate) enum PageError {
    /// No pipeline of that id or name.
    NotFound(String),
    /// Something else is not there; the text says what.
    Missing(String),
    StoreDown(String),
}

impl PageError {
    pub(crate) fn store(err: impl Display) -> Self {
        Self::StoreDown(err.to_string())
    }

    pub(crate) fn into_response(self, state: &AppState, chrome: Option<Chrome>) -> Response {
        match self {
            Self::NotFound(id) => html(
                StatusCode::NOT_FOUND,
                pages::message(chrome, "Not found", &format!("There is no pipeline {id:?}.")),
            ),
            Self::Missing(what) => html(StatusCode::NOT_FOUND, pages::message(chrome, "Not found", &what)),
            Self::StoreDown(err) => {
                if let Some(held_back) = state.store_warnings.admit() {
                    tracing::warn!(error = %err, held_back, "store unavailable for a page");
                }
                let text = "The database is not reachable right now. Events are still being accepted; \
                            this page tries again every 5 seconds and shows them once it is back.";
                let page = pages::message_retrying(chrome, "Database unavailable", text, 5);
                let mut response = html(StatusCode::SERVICE_UNAVAILABLE, page);
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                response
            }
        }
    }
}

pub(crate) async fn find(state: &AppState, id: &str) -> Result<PipelineRecord, PageError> {
    match state.store.find_pipeline(id).await {
        Ok(Some(record)) => Ok(record),
        Ok(None) => Err(PageError::NotFound(id.to_owned())),
        Err(err) => Err(PageError::store(err)),
    }
}

/// Events per minute over the hour ending with the current minute.
pub(crate) async fn last_hour(state: &AppState, pipeline: &str, now: i64) -> Result<Vec<i64>, PageError> {
    let (from, to) = ChartRange::Hour.window(now);
    let series = state.store.series(pipeline, from, to, ChartRange::Hour.bucket_ms()).await;
    Ok(series.map_err(PageError::store)?.iter().map(|p| p.count).collect())
}

async fn summarize(state: &AppState, record: PipelineRecord, now: i64) -> Result<PipelineSummary, PageError> {
    let last_hour = last_hour(state, &record.id, now).await?;
    let mut pinned = Vec::new();
    for view in state.store.list_views(&record.id).await.map_err(PageError::store)?.iter().filter(|v| v.spec.pinned) {
        let card = crate::view_pages::load_card(state, view, ChartRange::Hour).await?;
        pinned.push((card.name, card.aggregate, dash_web::views::number(card.total)));
    }
    Ok(PipelineSummary {
        pinned,
        rate: dash_web::rate_per_second(&last_hour, now),
        id: record.id,
        name: record.name,
        stats: record.stats,
        last_hour,
        retention: record.retention.map(dash_domain::format_retention),
        set_aside: record.set_aside,
    })
}

/// A pipeline's chart over `range`, and its events per minute over the hour ending with the
/// current minute (the chart's own counts when it shows that hour; else read once more), which
/// rates and freshness are read from.
pub(crate) async fn load_chart(
    state: &AppState,
    record: &PipelineRecord,
    range: ChartRange,
    now: i64,
) -> Result<(Chart, Vec<i64>), PageError> {
    let (from, to) = range.window(now);
    let bucket_ms = range.bucket_ms();
    let series = state.store.series(&record.id, from, to, bucket_ms).await.map_err(PageError::store)?;
    let counts: Vec<i64> = series.iter().map(|p| p.count).collect();
    let last_hour = if range == ChartRange::Hour { counts.clone() } else { last_hour(state, &record.id, now).await? };
    Ok((Chart { range, from_ms: from, bucket_ms, counts }, last_hour))
}

/// The live rate, chart and end-to-end latency over `range`.
async fn load_panel(state: &AppState, record: &PipelineRecord, range: ChartRange) -> Result<PipelinePanel, PageError> {
    let now = now_ms();
    let (chart, last_hour) = load_chart(state, record, range, now).await?;
    let latency = state.hub.latency(&record.id).await.map(|l| dash_web::EndToEnd {
        p50_ms: l.p50_ms,
        p99_ms: l.p99_ms,
        batches: l.batches,
    });
    Ok(PipelinePanel { pipeline: record.id.clone(), rate: dash_web::rate_per_second(&last_hour, now), chart, latency })
}

/// The latest `read` events (newest first), of which the page shows as many as `query` asks.
async fn load_latest(
    state: &AppState,
    record: &PipelineRecord,
    query: &PageQuery,
    read: usize,
) -> Result<LatestEvents, PageError> {
    let events = state.store.recent_events(&record.id, read as u32).await.map_err(PageError::store)?;
    Ok(LatestEvents {
        pipeline: record.id.clone(),
        range: query.range(),
        events: events
            .into_iter()
            .map(|e| EventRow { id: e.id, event_type: e.event_type, time: e.time, payload: e.payload.get().to_owned() })
            .collect(),
        shown: query.events_shown(),
    })
}

async fn overview(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let result = async {
        let records = state.store.list_pipelines().await.map_err(PageError::store)?;
        let now = now_ms();
        let mut summaries = Vec::with_capacity(records.len());
        for record in records {
            summaries.push(summarize(&state, record, now).await?);
        }
        Ok::<_, PageError>(summaries)
    }
    .await;
    match result {
        Ok(summaries) => html(StatusCode::OK, pages::overview(chrome(&state, &headers), summaries)),
        Err(err) => err.into_response(&state, Some(chrome(&state, &headers))),
    }
}

async fn row(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let result = async { summarize(&state, find(&state, &id).await?, now_ms()).await }.await;
    match result {
        Ok(summary) => html(StatusCode::OK, pages::overview_row(summary)),
        Err(err) => err.into_response(&state, None),
    }
}

#[derive(Deserialize)]
pub(crate) struct PageQuery {
    range: Option<String>,
    reveal: Option<String>,
    /// How many of the latest events to show (`50`; anything else shows the first ten).
    events: Option<String>,
}

impl PageQuery {
    /// An unknown range shows the default one rather than an error page.
    pub(crate) fn range(&self) -> ChartRange {
        self.range.as_deref().and_then(ChartRange::parse).unwrap_or_default()
    }

    /// An unknown count shows the first ten rather than an error page.
    fn events_shown(&self) -> usize {
        match self.events.as_deref().and_then(|n| n.parse::<usize>().ok()) {
            Some(dash_web::LATEST_EVENTS_MORE) => dash_web::LATEST_EVENTS_MORE,
            _ => dash_web::LATEST_EVENTS,
        }
    }
}

/// The webhook URL as the visitor reached this node (web nodes are the public edge).
fn webhook_url(headers: &HeaderMap, id: &str) -> String {
    site_url(headers, &format!("/webhooks/{id}"))
}

/// `path` on this site as the visitor reached it. The `Host` header goes into a shell snippet:
/// only a plain host name or address with a port is used (no quote, space or `$` can reach the
/// shell), anything else shows `localhost:8080`.
pub(crate) fn site_url(headers: &HeaderMap, path: &str) -> String {
    let plain_host = |h: &&str| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).filter(plain_host).unwrap_or("localhost:8080");
    let scheme = match headers.get("x-forwarded-proto").and_then(|p| p.to_str().ok()) {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}{path}")
}

/// The page's view of a source: the same redacted fields the API shows.
fn source_status(record: &dash_store::SourceRecord) -> dash_web::SourceStatus {
    let shown = crate::api::source_json(record, now_ms());
    let text = |key: &str| shown[key].as_str().map(str::to_owned);
    let schedule = match (text("every"), text("cron")) {
        (Some(every), _) => format!("every {every}"),
        (None, Some(cron)) => format!("cron {cron} (UTC)"),
        (None, None) => "unreadable source".to_owned(),
    };
    dash_web::SourceStatus {
        url: text("url").unwrap_or_default(),
        schedule,
        last_run: text("last_run"),
        next_run: text("next_run"),
        last_error: text("last_error").or_else(|| text("error")),
        runs: record.runs,
        failures: record.failures,
        events: record.events_total,
    }
}

async fn pipeline(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let record = find(&state, &id).await?;
        let secret = if query.reveal.as_deref() == Some("secret") {
            let auths = state.store.pipeline_auths().await.map_err(PageError::store)?;
            auths.into_iter().find(|a| a.id.as_str() == record.id).and_then(|a| a.secrets.first().map(|s| s.expose()))
        } else {
            None
        };
        let provider = record.provider();
        let since = now_ms() - crate::api::REFUSALS_SPAN_MS;
        let refused = state.store.refusals(&record.id, since).await.map_err(PageError::store)?;
        let refused = (refused.total() > 0).then(|| dash_web::RefusedDeliveries {
            total: refused.total(),
            main_reason: refused
                .by_reason
                .iter()
                .max_by_key(|(_, n)| *n)
                .map(|(reason, _)| reason.clone())
                .unwrap_or_default(),
            latest_at: refused.latest.as_ref().map(|(at, _)| dash_domain::format_ms(*at)),
        });
        let send = SendInstructions { url: webhook_url(&headers, &record.id), secret, provider, refused };
        // The page reads the most it may show: the field explorer looks at all of them.
        let (panel, latest) = tokio::join!(
            load_panel(&state, &record, query.range()),
            load_latest(&state, &record, &query, dash_web::LATEST_EVENTS_MORE),
        );
        let (panel, latest) = (panel?, latest?);
        let source = state.store.source(&record.id).await.map_err(PageError::store)?.map(|s| source_status(&s));
        let payloads: Vec<&str> = latest.events.iter().map(|e| e.payload.as_str()).collect();
        let types: Vec<&str> = latest.events.iter().filter_map(|e| e.event_type.as_deref()).collect();
        let views = crate::view_pages::load_views(&state, &record.id, query.range(), &payloads, &types).await?;
        let summary = PipelineSummary {
            rate: panel.rate,
            retention: record.retention.map(dash_domain::format_retention),
            set_aside: record.set_aside,
            id: record.id,
            name: record.name,
            stats: record.stats,
            last_hour: Vec::new(),
            pinned: Vec::new(),
        };
        Ok::<_, PageError>((summary, panel, latest, send, source, views))
    }
    .await;
    match result {
        Ok((summary, panel, latest, send, source, views)) => {
            html(StatusCode::OK, pages::pipeline(chrome(&state, &headers), summary, panel, latest, send, source, views))
        }
        Err(err) => err.into_response(&state, Some(chrome(&state, &headers))),
    }
}

async fn panel(State(state): State<AppState>, Path(id): Path<String>, Query(query): Query<PageQuery>) -> Response {
    let result = async { load_panel(&state, &find(&state, &id).await?, query.range()).await }.await;
    match result {
        Ok(panel) => html(StatusCode::OK, pages::pipeline_panel(panel)),
        Err(err) => err.into_response(&state, None),
    }
}

async fn latest(State(state): State<AppState>, Path(id): Path<String>, Query(query): Query<PageQuery>) -> Response {
    // One more than are shown: whether there are more says whether to offer them.
    let read = (query.events_shown() + 1).min(dash_web::LATEST_EVENTS_MORE);
    let result = async { load_latest(&state, &find(&state, &id).await?, &query, read).await }.await;
    match result {
        Ok(latest) => html(StatusCode::OK, pages::pipeline_latest(latest)),
        Err(err) => err.into_response(&state, None),
    }
}

async fn cluster(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (_, report) = crate::ops::readiness(&state, crate::ops::Detail::for_caller(&state, &headers)).await;
    let checks = report["checks"]
        .as_object()
        .map(|checks| {
            checks
                .iter()
                .map(|(name, check)| {
                    let ok = check["ok"].as_bool().unwrap_or(false);
                    let mut detail: Vec<String> = check
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(key, _)| *key != "ok")
                        .map(|(key, value)| format!("{key}: {value}"))
                        .collect();
                    detail.sort();
                    (name.clone(), ok, detail.join(", "))
                })
                .collect()
        })
        .unwrap_or_default();
    let node = NodeStatus {
        node: state.node.node.clone(),
        role: state.node.role.clone(),
        region: state.node.region.clone(),
        version: state.node.version.clone(),
        uptime_secs: state.node.started_at.elapsed().as_secs(),
        status: report["status"].as_str().unwrap_or("unknown").to_owned(),
        checks,
    };
    html(StatusCode::OK, pages::cluster(chrome(&state, &headers), node, node_rows(&state)))
}

fn node_rows(state: &AppState) -> Vec<NodeRow> {
    state
        .members()
        .into_iter()
        .map(|m| NodeRow {
            node: m.heartbeat.node,
            role: m.heartbeat.role,
            region: m.heartbeat.region,
            version: m.heartbeat.version,
            status: m.status.to_owned(),
            last_seen: m.last_seen,
            this_node: m.this_node,
            in_dns: m.in_dns,
            load: m.heartbeat.load,
        })
        .collect()
}

async fn cluster_nodes(State(state): State<AppState>) -> Response {
    html(StatusCode::OK, pages::cluster_nodes(node_rows(&state)))
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Only a path on this site (no open redirect), and only one that goes into a `Location`
/// header as it is. A browser drops tabs and newlines from a URL and reads `\\` as `/`, so
/// `/<TAB>/evil.example` would become `//evil.example`: the path must be `/` followed by
/// anything but a second `/`, in visible ASCII without a backslash (percent-escapes stay
/// escaped, within this site). Anything else goes to `/`.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(path)
            if path.len() <= 2048
                && path.starts_with('/')
                && !path.starts_with("//")
                && path.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            path
        }
        _ => "/",
    }
}

async fn login_form(State(state): State<AppState>, Query(query): Query<NextQuery>) -> Response {
    let next = safe_next(query.next.as_deref());
    if state.limits.admin_token.is_none() {
        return Redirect::to(next).into_response();
    }
    html(StatusCode::OK, pages::login(next, None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    Client(peer): Client,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    if crate::origin::is_cross_origin(&headers) {
        return html(StatusCode::FORBIDDEN, pages::login("/", Some("Sign in from this site's own login page.")));
    }
    let Some(expected) = state.limits.admin_token.as_deref() else {
        return Redirect::to("/").into_response();
    };
    let Ok(Form(form)) = form else {
        return html(
            StatusCode::BAD_REQUEST,
            pages::login("/", Some("The form was incomplete; enter the admin token.")),
        );
    };
    let next = safe_next(form.next.as_deref());
    if let Err(throttled) = state.throttle.admit(peer, Scope::Admin) {
        return throttled.into_response();
    }
    if !auth::is_admin_token(form.token.trim(), expected) {
        tracing::warn!("dashboard login with a wrong admin token");
        let refusal = crate::ApiError::unauthorized("invalid_admin_token", "not the admin token");
        let answer = state.throttle.failed(peer, Scope::Admin, refusal);
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            return answer.into_response();
        }
        return html(StatusCode::UNAUTHORIZED, pages::login(next, Some("That is not the admin token.")));
    }
    let mut response = Redirect::to(next).into_response();
    response.headers_mut().insert(header::SET_COOKIE, auth::start_session(expected, &headers));
    response
}

async fn logout(headers: HeaderMap) -> Response {
    if crate::origin::is_cross_origin(&headers) {
        return crate::origin::cross_origin_refused().into_response();
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(header::SET_COOKIE, auth::end_session());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_only_redirects_within_the_site() {
        assert_eq!(safe_next(Some("/pipelines/a?range=5m")), "/pipelines/a?range=5m");
        let bad_ones = [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "\\/evil",
            "evil",
            "",
            "/\t/evil.example/",
            "/\r\n/evil.example",
            "/\n/evil.example",
            "/ /evil.example",
            "/\u{0}",
            "/\u{1}x",
            "/\u{7f}",
            "/é",
            "/\u{3000}/evil.example",
        ];
        for bad in bad_ones {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
        assert_eq!(safe_next(Some("/%09/evil.example/")), "/%09/evil.example/", "escaped: a path on this site");
    }

    #[test]
    fn the_host_header_never_reaches_the_shell_snippet_unquoted() {
        let with_host = |host: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            webhook_url(&headers, "orders")
        };
        assert_eq!(with_host("dash.example:8080"), "http://dash.example:8080/webhooks/orders");
        assert_eq!(with_host("[::1]:80"), "http://[::1]:80/webhooks/orders");
        for hostile in ["x'; rm -rf ~; '", "a b", "$(id)", "h`id`", "h\"x"] {
            assert_eq!(with_host(hostile), "http://localhost:8080/webhooks/orders", "{hostile}");
        }
    }
}
