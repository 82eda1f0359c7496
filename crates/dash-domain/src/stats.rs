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
}

/// Which minutes of a view a batch changed: `[from, to)`, unix ms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewTouch {
    pub view: String,
    pub from: i64,
    pub to: i64,
}

/// What every node publishes each second on `dash.node.heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHeartbeat {
    pub node: String,
    pub role: String,
    pub region: String,
    /// Where the node listens (`IP:PORT`).
    pub addr: String,
    pub version: String,
    /// RFC 3339.
    pub started_at: String,
}
