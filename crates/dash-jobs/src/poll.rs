//! One poll: fetch the source, pick the events out of the response, hand them to intake (the
//! same durable path as webhooks: intake log, buffers, dedupe), then save the cursor.

use std::time::{Duration, Instant};

use dash_domain::{PipelineId, parse_polled};
use dash_ingest::{Intake, SubmitError};
use dash_store::{PollOutcome, Store};
use serde_json::value::RawValue;

use crate::JobError;
use crate::source::{Source, SourceSpec};

/// Tries per tick before the poll counts as failed; waits between them double from this.
pub const ATTEMPTS: u32 = 3;
pub const FIRST_RETRY: Duration = Duration::from_millis(500);

/// Events handed to intake per submit (intake bounds its per-partition backlog).
const SUBMIT_CHUNK: usize = 1000;

/// Header telling the source which tick a request belongs to (RFC 3339): retries of one tick
/// carry the same value.
pub const TICK_HEADER: &str = "x-dash-tick";

/// Why one attempt failed, in words safe to show (no header values, no query values).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("request failed: {0}")]
    Request(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("source answered HTTP {0}")]
    Status(u16),
    #[error("response is not JSON: {0}")]
    Json(String),
    #[error("no array at {0:?} in the response")]
    NoArray(String),
    #[error("{0}")]
    Event(String),
}

pub struct Poller {
    pub store: Store,
    pub intake: Intake,
    pub http: reqwest::Client,
}

impl Poller {
    /// Runs one tick of `pipeline`'s source. Source failures are retried here with backoff and
    /// then recorded (they are the source's, not the job's); `Err` means Dash itself could not
    /// do its part (store or intake), and the job is retried by the queue.
    pub async fn run(&self, pipeline: &str, tick_ms: i64) -> Result<(), JobError> {
        let Some(record) = self.store.source(pipeline).await? else {
            tracing::debug!(pipeline, "source removed; tick skipped");
            return Ok(());
        };
        let source = match SourceSpec::from_stored(&record.spec) {
            Ok(source) => source,
            Err(err) => {
                let outcome = PollOutcome::Failed { error: err.to_string() };
                self.store.record_poll(pipeline, tick_ms, dash_domain::now_ms(), &outcome).await?;
                return Ok(());
            }
        };
        let pipeline_id = PipelineId::parse(pipeline).map_err(|e| JobError::Pipeline(e.to_string()))?;
        let started = Instant::now();
        let mut delay = FIRST_RETRY;
        let mut attempt = 1;
        let outcome = loop {
            match self.fetch(&source, record.cursor.as_deref(), tick_ms).await {
                Ok(response) => break Ok(response),
                Err(err) if attempt < ATTEMPTS => {
                    tracing::info!(pipeline, attempt, error = %err, retry_in = ?delay, "source poll failed; retrying");
                    metrics::counter!("dash_source_attempt_failures_total").increment(1);
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(err) => break Err(err),
            }
        };
        let outcome = match outcome {
            Ok(fetched) => {
                let count = fetched.events.len() as i64;
                self.submit(&pipeline_id, fetched.events).await?;
                if let Some(cursor) = fetched.cursor {
                    self.store.save_cursor(pipeline, &cursor, tick_ms).await?;
                }
                metrics::counter!("dash_source_events_total").increment(count as u64);
                PollOutcome::Fetched { events: count }
            }
            Err(err) => {
                tracing::warn!(pipeline, attempts = attempt, error = %err, "source poll failed");
                PollOutcome::Failed { error: err.to_string() }
            }
        };
        let result = if matches!(outcome, PollOutcome::Fetched { .. }) { "ok" } else { "failed" };
        metrics::counter!("dash_source_polls_total", "outcome" => result).increment(1);
        metrics::histogram!("dash_source_poll_seconds").record(started.elapsed().as_secs_f64());
        self.store.record_poll(pipeline, tick_ms, dash_domain::now_ms(), &outcome).await?;
        Ok(())
    }

    async fn fetch(&self, source: &Source, cursor: Option<&str>, tick_ms: i64) -> Result<Fetched, FetchError> {
        let mut url = source.url.clone();
        if let (Some(spec), Some(value)) = (&source.spec.cursor, cursor) {
            url.query_pairs_mut().append_pair(&spec.param, value);
        }
        let mut request = self.http.request(source.method.clone(), url).timeout(source.timeout);
        for (name, value) in &source.spec.headers {
            request = request.header(name, value);
        }
        request = request.header(TICK_HEADER, dash_domain::format_ms(tick_ms));
        let response = request.send().await.map_err(|e| describe(&e, source.timeout))?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let body = response.bytes().await.map_err(|e| describe(&e, source.timeout))?;
        let received_ms = dash_domain::now_ms();
        read_response(&body, &source.spec, received_ms)
    }

    /// Hands events to intake in chunks; a full backlog is waited out briefly (polls are not in
    /// a hurry), a full or broken log is the job's failure.
    async fn submit(&self, pipeline: &PipelineId, events: Vec<dash_domain::Event>) -> Result<(), JobError> {
        let mut events = events;
        while !events.is_empty() {
            let rest = events.split_off(events.len().min(SUBMIT_CHUNK));
            let mut waited = Duration::ZERO;
            loop {
                match self.intake.submit(pipeline, events.clone()).await {
                    Ok(_) => break,
                    Err(SubmitError::Backlog { .. }) if waited < Duration::from_secs(30) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        waited += Duration::from_millis(200);
                    }
                    Err(err) => return Err(JobError::Intake(err.to_string())),
                }
            }
            events = rest;
        }
        Ok(())
    }
}

struct Fetched {
    events: Vec<dash_domain::Event>,
    cursor: Option<String>,
}

/// Reads the events (and the next cursor) out of a response body.
fn read_response(body: &[u8], spec: &SourceSpec, received_ms: i64) -> Result<Fetched, FetchError> {
    let whole: serde_json::Value = serde_json::from_slice(body).map_err(|e| FetchError::Json(e.to_string()))?;
    let array = whole
        .pointer(&spec.events)
        .and_then(|v| v.as_array())
        .ok_or_else(|| FetchError::NoArray(spec.events.clone()))?;
    let texts: Vec<String> = array.iter().map(|item| item.to_string()).collect();
    let raws: Vec<Box<RawValue>> = texts
        .into_iter()
        .map(RawValue::from_string)
        .collect::<Result<_, _>>()
        .map_err(|e| FetchError::Json(e.to_string()))?;
    let borrowed: Vec<&RawValue> = raws.iter().map(|r| r.as_ref()).collect();
    let events = parse_polled(&borrowed, received_ms).map_err(|e| FetchError::Event(e.to_string()))?;
    let cursor = spec.cursor.as_ref().and_then(|c| whole.pointer(&c.from)).and_then(|v| match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    Ok(Fetched { events, cursor })
}

/// reqwest's error in words that carry no URL (its query may hold a key).
fn describe(err: &reqwest::Error, timeout: Duration) -> FetchError {
    if err.is_timeout() {
        return FetchError::Timeout(timeout);
    }
    let kind = if err.is_connect() {
        "cannot connect"
    } else if err.is_body() || err.is_decode() {
        "response body broken off"
    } else {
        "transport error"
    };
    let mut text = kind.to_owned();
    let mut cause = std::error::Error::source(err);
    while let Some(inner) = cause {
        text = format!("{kind}: {inner}");
        cause = inner.source();
    }
    FetchError::Request(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(events: &str, cursor: Option<(&str, &str)>) -> SourceSpec {
        SourceSpec {
            url: "http://127.0.0.1:9/".into(),
            method: "GET".into(),
            every: Some("1s".into()),
            cron: None,
            events: events.into(),
            headers: Default::default(),
            cursor: cursor.map(|(param, from)| crate::source::CursorSpec { param: param.into(), from: from.into() }),
            timeout: None,
        }
    }

    #[test]
    fn events_and_cursor_come_from_their_pointers() {
        let body = br#"{"data":{"items":[{"id":"a","v":1},{"v":2}]},"next":17}"#;
        let fetched = read_response(body, &spec("/data/items", Some(("after", "/next"))), 1).unwrap();
        assert_eq!(fetched.events.len(), 2);
        assert_eq!(fetched.events[0].id, "a");
        assert!(fetched.events[1].id.starts_with("sha256:"));
        assert_eq!(fetched.cursor.as_deref(), Some("17"));
        let top = read_response(br#"[{"id":"x"}]"#, &spec("", None), 1).unwrap();
        assert_eq!(top.events[0].id, "x");
    }

    #[test]
    fn bad_responses_are_named() {
        assert!(matches!(read_response(b"<html>", &spec("", None), 1), Err(FetchError::Json(_))));
        assert!(matches!(read_response(br#"{"a":1}"#, &spec("/data", None), 1), Err(FetchError::NoArray(_))));
        assert!(matches!(read_response(b"[1,2]", &spec("", None), 1), Err(FetchError::Event(_))));
    }
}
