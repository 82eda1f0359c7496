//! A polling source as users configure it (`source` object of the admin API, `[[sources]]` in
//! the config file, `dashd pipeline source`), its validation, and its schedule.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// Shortest interval a source may be polled at.
pub const MIN_EVERY: Duration = Duration::from_secs(1);
/// Default and longest time one request to a source may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// What to fetch, when, and where the events are in the response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// `http://` or `https://` URL.
    pub url: String,
    /// `GET` (default) or `POST` (with an empty body).
    #[serde(default = "default_method")]
    pub method: String,
    /// Interval schedule, e.g. `"30s"`, `"5m"`; aligned to the epoch so every node agrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// Cron schedule (UTC), 5 fields (minute first) or 6–7 (seconds first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// JSON pointer to the array of events in the response; `""` means the response itself.
    #[serde(default)]
    pub events: String,
    /// Request headers. Their values are secrets: stored, sent, never shown or logged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Optional cursor: a field of the last response passed as a query parameter next time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<CursorSpec>,
    /// Time allowed for one request, e.g. `"10s"` (default 10 s, at most 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CursorSpec {
    /// Query parameter the saved value is sent as.
    pub param: String,
    /// JSON pointer to the value in the response (a string or a number).
    pub from: String,
}

fn default_method() -> String {
    "GET".to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("source.url must be an http:// or https:// URL: {0}")]
    Url(String),
    #[error("source.method must be GET or POST")]
    Method,
    #[error("source needs exactly one schedule: \"every\" or \"cron\"")]
    Schedule,
    #[error("source.every: {0}")]
    Every(String),
    #[error("source.cron: {0}")]
    Cron(String),
    #[error("source.{field} must be a JSON pointer (\"\" or starting with \"/\")")]
    Pointer { field: &'static str },
    #[error("source.headers: {0}")]
    Header(String),
    #[error("source.cursor.param must not be empty")]
    CursorParam,
    #[error("source.timeout: {0}")]
    Timeout(String),
    #[error("stored source is unreadable: {0}")]
    Stored(String),
}

/// A source that passed validation, ready to be scheduled and fetched.
#[derive(Debug, Clone)]
pub struct Source {
    pub spec: SourceSpec,
    pub url: reqwest::Url,
    pub method: reqwest::Method,
    pub schedule: Schedule,
    pub timeout: Duration,
}

impl SourceSpec {
    pub fn validate(&self) -> Result<Source, SourceError> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| SourceError::Url(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(SourceError::Url(format!("scheme {:?}", url.scheme())));
        }
        let method = match self.method.to_ascii_uppercase().as_str() {
            "GET" => reqwest::Method::GET,
            "POST" => reqwest::Method::POST,
            _ => return Err(SourceError::Method),
        };
        let schedule = match (&self.every, &self.cron) {
            (Some(every), None) => Schedule::every(every)?,
            (None, Some(cron)) => Schedule::cron(cron)?,
            _ => return Err(SourceError::Schedule),
        };
        if !is_pointer(&self.events) {
            return Err(SourceError::Pointer { field: "events" });
        }
        for (name, value) in &self.headers {
            reqwest::header::HeaderName::from_str(name)
                .map_err(|_| SourceError::Header(format!("bad name {name:?}")))?;
            // The value is never echoed: it may be a secret.
            reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| SourceError::Header(format!("bad value for {name:?}")))?;
        }
        if let Some(cursor) = &self.cursor {
            if cursor.param.is_empty() {
                return Err(SourceError::CursorParam);
            }
            if !is_pointer(&cursor.from) {
                return Err(SourceError::Pointer { field: "cursor.from" });
            }
        }
        let timeout = match &self.timeout {
            None => DEFAULT_TIMEOUT,
            Some(text) => {
                let timeout = humantime::parse_duration(text).map_err(|e| SourceError::Timeout(e.to_string()))?;
                if timeout.is_zero() || timeout > MAX_TIMEOUT {
                    return Err(SourceError::Timeout(format!("must be between 1ms and {}s", MAX_TIMEOUT.as_secs())));
                }
                timeout
            }
        };
        Ok(Source { spec: self.clone(), url, method, schedule, timeout })
    }

    /// Parses and validates a stored spec.
    pub fn from_stored(json: &str) -> Result<Source, SourceError> {
        let spec: SourceSpec = serde_json::from_str(json).map_err(|e| SourceError::Stored(e.to_string()))?;
        spec.validate()
    }

    /// The spec as pages and the API show it: header values and URL query values masked.
    pub fn redacted(&self) -> SourceSpec {
        let mut shown = self.clone();
        for value in shown.headers.values_mut() {
            *value = MASK.to_owned();
        }
        shown.url = redact_url(&self.url);
        shown
    }
}

const MASK: &str = "***";

/// The URL without secrets: query values masked (API keys often travel there), no userinfo.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = reqwest::Url::parse(raw) else { return MASK.to_owned() };
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let pairs: Vec<(String, String)> = url.query_pairs().map(|(k, _)| (k.into_owned(), MASK.to_owned())).collect();
    if pairs.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

fn is_pointer(text: &str) -> bool {
    text.is_empty() || text.starts_with('/')
}

/// When a source runs. Ticks are instants (unix ms) every node computes alike.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Every multiple of the interval since the epoch.
    Every(Duration),
    /// Cron occurrences, UTC.
    Cron(Box<cron::Schedule>),
}

impl Schedule {
    fn every(text: &str) -> Result<Self, SourceError> {
        let every = humantime::parse_duration(text).map_err(|e| SourceError::Every(e.to_string()))?;
        if every < MIN_EVERY {
            return Err(SourceError::Every(format!("must be at least {}s", MIN_EVERY.as_secs())));
        }
        Ok(Self::Every(every))
    }

    fn cron(text: &str) -> Result<Self, SourceError> {
        // Five fields is the classic crontab (minute first); cron's own syntax starts at seconds.
        let fields = text.split_whitespace().count();
        let full = if fields == 5 { format!("0 {text}") } else { text.to_owned() };
        let schedule = cron::Schedule::from_str(&full).map_err(|e| SourceError::Cron(e.to_string()))?;
        Ok(Self::Cron(Box::new(schedule)))
    }

    /// The latest tick at or before `now_ms`.
    pub fn latest(&self, now_ms: i64) -> Option<i64> {
        match self {
            Self::Every(every) => {
                let step = every.as_millis() as i64;
                Some(now_ms.div_euclid(step) * step)
            }
            Self::Cron(schedule) => {
                let probe = utc(now_ms + 1_000)?;
                schedule.after(&probe).rev().map(|t| t.timestamp_millis()).find(|t| *t <= now_ms)
            }
        }
    }

    /// The first tick after `after_ms`.
    pub fn next(&self, after_ms: i64) -> Option<i64> {
        match self {
            Self::Every(every) => {
                let step = every.as_millis() as i64;
                Some((after_ms.div_euclid(step) + 1) * step)
            }
            Self::Cron(schedule) => schedule.after(&utc(after_ms)?).next().map(|t| t.timestamp_millis()),
        }
    }

    /// Time between ticks around `at_ms` (for a cron schedule, between the next two).
    pub fn period(&self, at_ms: i64) -> Duration {
        match self {
            Self::Every(every) => *every,
            Self::Cron(_) => {
                let first = self.next(at_ms).unwrap_or(at_ms);
                let second = self.next(first).unwrap_or(first + 60_000);
                Duration::from_millis((second - first).max(1_000) as u64)
            }
        }
    }
}

fn utc(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Result<Source, SourceError> {
        serde_json::from_value::<SourceSpec>(json).unwrap().validate()
    }

    #[test]
    fn validation_names_the_field() {
        assert!(spec(serde_json::json!({"url": "http://127.0.0.1:9/x", "every": "30s", "events": "/data"})).is_ok());
        let cases = [
            (serde_json::json!({"url": "ftp://x/", "every": "30s"}), "source.url"),
            (serde_json::json!({"url": "http://x/", "every": "30s", "cron": "* * * * *"}), "exactly one"),
            (serde_json::json!({"url": "http://x/"}), "exactly one"),
            (serde_json::json!({"url": "http://x/", "every": "500ms"}), "source.every"),
            (serde_json::json!({"url": "http://x/", "cron": "nope"}), "source.cron"),
            (serde_json::json!({"url": "http://x/", "every": "1s", "events": "data"}), "source.events"),
            (serde_json::json!({"url": "http://x/", "every": "1s", "method": "PUT"}), "GET or POST"),
            (serde_json::json!({"url": "http://x/", "every": "1s", "headers": {"X": "a\nb"}}), "bad value"),
            (serde_json::json!({"url": "http://x/", "every": "1s", "timeout": "5m"}), "source.timeout"),
        ];
        for (json, expected) in cases {
            let err = spec(json.clone()).unwrap_err().to_string();
            assert!(err.contains(expected), "{json}: {err}");
            assert!(!err.contains("a\nb"), "a header value leaked: {err}");
        }
    }

    #[test]
    fn interval_ticks_are_aligned_to_the_epoch() {
        let schedule = Schedule::every("30s").unwrap();
        assert_eq!(schedule.latest(95_000), Some(90_000));
        assert_eq!(schedule.latest(90_000), Some(90_000));
        assert_eq!(schedule.next(90_000), Some(120_000));
        assert_eq!(schedule.period(0), Duration::from_secs(30));
    }

    #[test]
    fn cron_ticks_in_both_directions() {
        let schedule = Schedule::cron("*/5 * * * *").unwrap();
        let now = 1_700_000_123_456; // 2023-11-14T22:15:23.456Z
        assert_eq!(schedule.latest(now), Some(1_700_000_100_000)); // 22:15:00
        assert_eq!(schedule.next(now), Some(1_700_000_400_000)); // 22:20:00
        assert_eq!(schedule.period(now), Duration::from_secs(300));
        let seconds = Schedule::cron("*/2 * * * * *").unwrap();
        assert_eq!(seconds.latest(1_700_000_123_456), Some(1_700_000_122_000));
        assert_eq!(seconds.latest(1_700_000_122_000), Some(1_700_000_122_000));
    }

    #[test]
    fn redaction_hides_header_values_and_query_values() {
        let source = spec(serde_json::json!({
            "url": "https://user:pw@api.example.com/v1/events?api_key=s3cret&page=2",
            "every": "1m",
            "headers": {"Authorization": "Bearer s3cret"}
        }))
        .unwrap();
        let shown = serde_json::to_string(&source.spec.redacted()).unwrap();
        assert!(!shown.contains("s3cret") && !shown.contains("pw"), "{shown}");
        assert!(shown.contains("api_key=***") && shown.contains("Authorization"), "{shown}");
    }
}
