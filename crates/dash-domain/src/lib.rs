//! Dash's domain: what a pipeline and an event are, how a webhook body becomes events,
//! and what a pipeline update carries.
//!
//! **Architecture invariant:** this crate does no I/O and knows no framework. Everything here
//! is a pure function of its inputs, so it is tested by unit tests alone.

mod body;
mod ids;
mod payload;
mod retention;
mod stats;

pub use body::{BodyError, BodyFormat, RequestIdentity, parse_body, parse_polled};
pub use ids::{EventId, InvalidId, PipelineId, check_pipeline_name, is_lookup_key, is_slug};
pub use payload::MAX_DEPTH;
pub use retention::{
    InvalidRetention, MAX_RETENTION, MIN_RETENTION, check_retention, format_retention, parse_retention,
};
pub use stats::{NodeHeartbeat, NodeLoad, PipelineStats, PipelineUpdate, ViewTouch};

use serde::{Deserialize, Serialize};

/// One event as it travels from intake to the store: identity, time and the raw JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Dedupe key within its pipeline.
    pub id: String,
    /// Event time, unix milliseconds: the event's `timestamp` field, else receive time.
    pub time_ms: i64,
    /// When this node received the request, unix milliseconds.
    pub received_ms: i64,
    /// The event object exactly as the sender wrote it.
    pub payload: String,
    /// The event's type where it is not the payload's own top-level `type` string: a provider's
    /// header (`X-GitHub-Event`, `X-Shopify-Topic`...) or a member deeper in the body (Slack's
    /// `/event/type`). `None`: the type, if any, is the payload's `/type` (read where needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
}

/// Longest event type kept, in bytes; a longer one is cut at a character boundary.
pub const EVENT_TYPE_MAX: usize = 128;

/// An event type as kept: trimmed, at most [`EVENT_TYPE_MAX`] bytes, without control
/// characters; `None` for a blank one.
pub fn event_type_of(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() || text.chars().any(char::is_control) {
        return None;
    }
    let mut end = text.len().min(EVENT_TYPE_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(text[..end].to_owned())
}

/// Current wall-clock time in unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// An instant as a query or a command line gives it: unix milliseconds, or RFC 3339 text.
pub fn parse_instant(text: &str) -> Option<i64> {
    text.parse::<i64>().ok().or_else(|| chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis()))
}

/// Formats unix milliseconds as RFC 3339 with millisecond precision (UTC).
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_unix_ms_or_rfc_3339() {
        assert_eq!(parse_instant("1765000000000"), Some(1_765_000_000_000));
        assert_eq!(parse_instant("2025-12-06T05:46:40.000Z"), Some(1_765_000_000_000));
        assert_eq!(parse_instant("2025-12-06T06:46:40+01:00"), Some(1_765_000_000_000));
        assert_eq!(parse_instant("yesterday"), None);
    }

    #[test]
    fn event_types_are_trimmed_bounded_and_plain() {
        assert_eq!(event_type_of(" push ").as_deref(), Some("push"));
        assert_eq!(event_type_of("   "), None);
        assert_eq!(event_type_of("tab\there"), None);
        let long = event_type_of(&"é".repeat(100)).unwrap();
        assert!(long.len() <= EVENT_TYPE_MAX && long.chars().all(|c| c == 'é'));
    }
}
