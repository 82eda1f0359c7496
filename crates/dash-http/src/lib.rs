//! Dash's HTTP surface. [`router`] mounts the routes a role serves on one axum `Router`:
//! `/health`, `/ready`, `/metrics` and the JSON API everywhere; `POST /webhooks/{pipeline}` where
//! the node runs intake, or forwarded to an ingestor where it is a web edge; the dashboard pages and `/live` where it serves browsers.
//!
//! **Architecture invariant:** this is the only crate that knows axum. Handlers translate HTTP
//! to calls on [`Intake`], [`Store`] and [`Bus`], and their errors to [`ApiError`]s.

mod api;
mod auth;
mod board_pages;
mod boards;
mod budget;
mod client;
mod client_counts;
mod connection_io;
mod error;
mod live;
mod live_sessions;
mod ops;
mod origin;
mod pages;
mod refusals;
mod request_metrics;
mod serve;
mod shares;
mod throttle;
mod view_pages;
mod views;
mod webhooks;

use dash_log_throttle::LogThrottle;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::http::StatusCode;
use dash_bus::Bus;
use dash_cluster::{Member, Membership};
use dash_domain::NodeHeartbeat;
use dash_edge::Forwarder;
use dash_ingest::Intake;
use dash_live::Hub;
use dash_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use request_metrics::RequestMetrics;

pub use api::source_json;
pub use client::ClientTrust;
pub use client::shared_peer;
pub use error::ApiError;
pub use live::follow_bus;
pub use refusals::flush_refusals;
pub use serve::{HEADER_READ_TIMEOUT, ServeLimits, SharedPeer, serve};

/// Who this node is, for `/ready` and the API.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: String,
    pub role: String,
    pub region: String,
    pub version: String,
    pub started_at: Instant,
}

/// Bounds and secrets the handlers enforce.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_body: usize,
    /// Request bodies being read or parsed at once, in bytes; past it, 429.
    pub inflight_body_bytes: usize,
    /// When set, the API, the dashboard and `/live` need it (Bearer token or login session).
    pub admin_token: Option<String>,
    /// The address senders post to, without a trailing `/` (`DASH_PUBLIC_URL`), for schemes
    /// that sign the URL.
    pub public_url: Option<String>,
    /// `/live` sessions one client may hold at once (`DASH_MAX_LIVE_PER_CLIENT`).
    pub max_live_per_client: usize,
}

/// Everything a handler can reach. Cloned per request (by every extractor and middleware that
/// takes it), so it is one `Arc`: a clone is one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares; all fields are handles.
#[derive(Clone)]
pub struct Shared {
    /// Present on roles that run intake.
    pub intake: Option<Intake>,
    pub store: Store,
    pub bus: Bus,
    pub node: Arc<NodeInfo>,
    pub limits: Arc<HttpLimits>,
    pub metrics: Option<PrometheusHandle>,
    /// Live fan-out to `/live` clients.
    pub hub: Hub,
    /// Body-byte budget (in KiB) shared by concurrent webhook requests, half at most per peer.
    pub(crate) inflight: Arc<budget::BodyBudget>,
    /// Failed authentications per client address.
    pub(crate) throttle: Arc<throttle::AuthThrottle>,
    /// Whom this node believes about a client's address (edges, the operator's proxy).
    pub(crate) client_trust: ClientTrust,
    /// Open `/live` sessions per client.
    pub(crate) live_sessions: Arc<live_sessions::LiveSessions>,
    /// Deliveries refused for their credentials, counted until the next flush to the store.
    pub(crate) refusals: Arc<refusals::RefusalTally>,
    /// Who else is in the cluster, from heartbeats (absent: this node alone).
    pub membership: Option<Membership>,
    /// On a web node without intake: hands webhooks to ingestors.
    pub edge: Option<Forwarder>,
    /// Pages and live subscriptions fail on each view while the store is down: one warning per
    /// period.
    pub(crate) store_warnings: Arc<LogThrottle>,
}

impl AppState {
    pub fn new(
        intake: Option<Intake>,
        store: Store,
        bus: Bus,
        node: NodeInfo,
        limits: HttpLimits,
        metrics: Option<PrometheusHandle>,
        hub: Hub,
    ) -> Self {
        let permits = u32::try_from(limits.inflight_body_bytes / 1024).unwrap_or(u32::MAX);
        let largest = u32::try_from(limits.max_body / 1024 + 1).unwrap_or(u32::MAX);
        let live_sessions = live_sessions::LiveSessions::new(limits.max_live_per_client);
        Self(Arc::new(Shared {
            intake,
            store,
            bus,
            node: Arc::new(node),
            limits: Arc::new(limits),
            metrics,
            hub,
            inflight: budget::BodyBudget::new(permits, largest),
            throttle: Default::default(),
            client_trust: ClientTrust::default(),
            live_sessions,
            refusals: Arc::default(),
            membership: None,
            edge: None,
            store_warnings: Arc::new(LogThrottle::per_period()),
        }))
    }

    pub fn with_edge(mut self, edge: Forwarder) -> Self {
        Arc::make_mut(&mut self.0).edge = Some(edge);
        self
    }

    pub fn with_client_trust(mut self, trust: ClientTrust) -> Self {
        Arc::make_mut(&mut self.0).client_trust = trust;
        self
    }

    pub fn with_membership(mut self, membership: Membership) -> Self {
        Arc::make_mut(&mut self.0).membership = Some(membership);
        self
    }

    /// Every node known, this one first; this node alone when there is no membership view.
    pub(crate) fn members(&self) -> Vec<Member> {
        match &self.membership {
            Some(membership) => membership.members(),
            None => vec![Member {
                heartbeat: NodeHeartbeat {
                    node: self.node.node.clone(),
                    role: self.node.role.clone(),
                    region: self.node.region.clone(),
                    addr: String::new(),
                    version: self.node.version.clone(),
                    started_at: String::new(),
                    load: None,
                },
                status: "up",
                last_seen: dash_domain::format_ms(dash_domain::now_ms()),
                this_node: true,
                in_dns: None,
            }],
        }
    }
}

/// All routes for this node's role.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new().merge(ops::router()).merge(api::router(state.clone())).merge(live::router());
    if state.intake.is_some() {
        router = router.merge(webhooks::router());
    } else if state.edge.is_some() {
        router = router.merge(webhooks::edge_router());
    }
    if state.node.role != "ingestor" {
        router = router.merge(pages::router(state.clone()));
    }
    // Error answers made outside the handlers are turned into JSON, and a panicking handler
    // into a 500, by the server loop (`serve`), around the whole router.
    router
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(Arc::new(RequestMetrics::default()), request_metrics::record))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}
