//! Dash's dashboard views: pages rendered on the server with Leptos, charts drawn as SVG, and
//! the small browser script that keeps a page live over `/live`.
//!
//! Every page is complete HTML before any script runs: counters, charts and the latest events are
//! all in the first response. The script (`assets/live.js`) then subscribes to what the page
//! shows, applies `update` frames to the counters in place and re-fetches the server-rendered
//! fragments (charts, event list) the update made stale.
//!
//! **Architecture invariant:** this crate does no I/O and knows no HTTP framework. The web
//! handlers (dash-http) load the data into the view models below and call [`render`]; everything
//! here is a pure function of them, tested by unit tests.
//!
//! Browser contract: an element with `data-pipeline` and `data-seq` asks the script to follow that
//! pipeline; inside it, elements with `data-field="count" | "last_event_at" | "duplicates"` are
//! set from each update; an element with `data-pipeline` and `data-refresh="<url>"` is replaced by
//! the HTML at that URL (at most every [`REFRESH_MS`]) after its pipeline changed. The element with
//! An element with `data-refresh` and `data-refresh-every="<ms>"` is re-fetched on that period
//! instead (the cluster page's node list). The element with
//! id `live-status` shows `static`, `connecting`, `live`, `reconnecting` or `stale`.

pub mod boards;
mod charts;
mod display;
pub mod export;
mod load;
pub mod notes;
pub mod pages;
pub mod views;

use dash_domain::PipelineStats;

pub use charts::{ChartRange, rate_per_second};

/// The browser script, served as `/assets/live.js`.
pub const LIVE_JS: &str = include_str!("../assets/live.js");
/// The stylesheet, served as `/assets/dash.css`.
pub const DASH_CSS: &str = include_str!("../assets/dash.css");
/// Shortest time between two re-fetches of one fragment, in milliseconds (read by the script
/// from the `data-refresh-ms` attribute of `<body>`).
pub const REFRESH_MS: u64 = 2_000;

/// What every page shows around its content.
#[derive(Debug, Clone)]
pub struct Chrome {
    pub node: String,
    pub role: String,
    pub region: String,
    pub version: String,
    /// Show a sign-out button (the admin token is set and the visitor has a session).
    pub signed_in: bool,
}

/// One pipeline as the overview and the pipeline page show it.
#[derive(Debug, Clone)]
pub struct PipelineSummary {
    pub id: String,
    pub name: String,
    pub stats: PipelineStats,
    /// Events per minute over the last hour, oldest first; the last bucket is the current minute.
    pub last_hour: Vec<i64>,
    /// Events per second over the last minute.
    pub rate: f64,
    /// How long the pipeline keeps its events, as shown (`"7days"`); `None`: the node default.
    pub retention: Option<String>,
    /// Events the store refused for their data and kept aside.
    pub set_aside: i64,
    /// Its pinned views with their value over the last hour: (name, aggregate, value as shown).
    pub pinned: Vec<(String, String, String)>,
}

/// A per-bucket chart of one pipeline.
#[derive(Debug, Clone)]
pub struct Chart {
    pub range: ChartRange,
    /// Start of the first bucket, unix ms.
    pub from_ms: i64,
    pub bucket_ms: i64,
    /// One count per bucket, oldest first.
    pub counts: Vec<i64>,
}

/// One of the latest events.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: String,
    /// Its type (a provider's, or the payload's `type`), when it has one.
    pub event_type: Option<String>,
    /// RFC 3339.
    pub time: String,
    /// The payload JSON as stored (the view shortens it).
    pub payload: String,
}

/// How to send to a pipeline.
#[derive(Debug, Clone, Default)]
pub struct SendInstructions {
    /// Absolute webhook URL.
    pub url: String,
    /// The current signing secret, only when the visitor asked to see it.
    pub secret: Option<String>,
    /// The provider that signs its deliveries (`github`, …); `None`: Standard Webhooks.
    pub provider: Option<String>,
    /// Deliveries refused for their credentials in the last hour.
    pub refused: Option<RefusedDeliveries>,
}

/// Deliveries refused for their credentials over the last hour.
#[derive(Debug, Clone, Default)]
pub struct RefusedDeliveries {
    pub total: i64,
    /// The reason most of them had (`bad_signature`, `missing_signature`, `stale_timestamp`,
    /// `bad_token`).
    pub main_reason: String,
    /// RFC 3339 time of the latest.
    pub latest_at: Option<String>,
}

/// A polling pipeline's source and what its polls did (values already redacted).
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    /// The URL with query values masked.
    pub url: String,
    /// `every 30s` or `cron */5 * * * *`.
    pub schedule: String,
    /// RFC 3339 times.
    pub last_run: Option<String>,
    pub next_run: Option<String>,
    pub last_error: Option<String>,
    pub runs: i64,
    pub failures: i64,
    pub events: i64,
}

/// The live rate and chart of a pipeline page, also served alone as a fragment.
#[derive(Debug, Clone)]
pub struct PipelinePanel {
    pub pipeline: String,
    pub rate: f64,
    pub chart: Chart,
    /// From an event's 202 to its update leaving for the browsers, over the last hour (`None`:
    /// no batch reached this node in that hour).
    pub latency: Option<EndToEnd>,
}

/// End-to-end latency over the last hour, as this node's live hub measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndToEnd {
    pub p50_ms: u32,
    pub p99_ms: u32,
    pub batches: u64,
}

/// The latest events of a pipeline page, also served alone as a fragment.
#[derive(Debug, Clone)]
pub struct LatestEvents {
    pub pipeline: String,
    /// The page's chart range, kept in the fragment's links.
    pub range: ChartRange,
    /// Newest first: at least one more than are shown when there are more.
    pub events: Vec<EventRow>,
    /// How many of them the page shows: [`LATEST_EVENTS`], or [`LATEST_EVENTS_MORE`] when asked.
    pub shown: usize,
}

/// Latest events a pipeline page shows at first.
pub const LATEST_EVENTS: usize = 10;
/// Latest events it shows when asked for more (`?events=50`).
pub const LATEST_EVENTS_MORE: usize = 50;

/// One node of the cluster, as heard from its heartbeats.
#[derive(Debug, Clone)]
pub struct NodeRow {
    pub node: String,
    pub role: String,
    pub region: String,
    pub version: String,
    /// `up` or `down`; `unreachable` when DNS lists it but it never beat.
    pub status: String,
    /// RFC 3339; empty when never heard from.
    pub last_seen: String,
    pub this_node: bool,
    /// Whether DNS lists it; `None` without DNS discovery.
    pub in_dns: Option<bool>,
    /// Its load, from its last heartbeat (none from nodes of earlier releases).
    pub load: Option<dash_domain::NodeLoad>,
}

/// This node as the cluster page shows it.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub node: String,
    pub role: String,
    pub region: String,
    pub version: String,
    pub uptime_secs: u64,
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: String,
    /// (check, ok, detail)
    pub checks: Vec<(String, bool, String)>,
}
