use serde::{Deserialize, Serialize};

/// A pipeline's running totals, as stored beside its sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineStats {
    /// Events stored (duplicates not counted).
    pub count: i64,
    /// Committed batches that touched the pipeline; rises by exactly 1 per batch.
    pub seq: i64,
    /// Events received again under an id already stored.
    pub duplicates: i64,
    /// Receive time of the newest stored event, RFC 3339; null before the first.
    pub last_event_at: Option<String>,
}

/// What a committed batch tells the rest of the system about one pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineUpdate {
    pub pipeline: String,
    pub seq: i64,
    pub stats: PipelineStats,
    /// Commit time, RFC 3339.
    pub at: String,
    /// The views this batch changed, and the minutes it changed in each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<ViewTouch>,
    /// When the batch's new events were acknowledged, unix ms: the oldest and the newest (for
    /// end-to-end latency). Absent from nodes of earlier releases and from updates read back
    /// from the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<[i64; 2]>,
}

/// Which minutes of a view a batch changed: `[from, to)`, unix ms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewTouch {
    pub view: String,
    pub from: i64,
    pub to: i64,
}

/// What every node publishes each second on `dash.node.heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeHeartbeat {
    pub node: String,
    pub role: String,
    pub region: String,
    /// Where the node listens (`IP:PORT`).
    pub addr: String,
    pub version: String,
    /// RFC 3339.
    pub started_at: String,
    /// The node's load when it beat; absent from nodes of releases before it was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<NodeLoad>,
}

/// A node's load as its heartbeat carries it (the figures docs/OPERATIONS.md sets thresholds
/// for). A figure is absent where the node's role has no such thing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeLoad {
    /// Resident memory.
    pub memory_bytes: Option<u64>,
    /// What the node may use: its cgroup's limit, else the machine's memory.
    pub memory_limit_bytes: Option<u64>,
    /// CPU used since the last beat, as a share of the cores the node may use (0–100).
    pub cpu_percent: Option<f64>,
    /// Open `/live` sockets (nodes that serve pages).
    pub live_sockets: Option<u64>,
    /// Jobs waiting and running across the cluster, as this node's scheduler last read them.
    pub jobs_pending: Option<u64>,
    pub jobs_running: Option<u64>,
    /// Events acknowledged and not yet stored, per partition (ingestors).
    pub backlog: Option<Vec<i64>>,
    /// The intake log's use and bound.
    pub spool_bytes: Option<u64>,
    pub spool_limit_bytes: Option<u64>,
    /// Whether batches reach the store.
    pub store_up: Option<bool>,
    /// This node's last heartbeat round trip through NATS.
    pub bus_round_trip_ms: Option<f64>,
}
