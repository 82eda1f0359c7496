//! Signed traffic through the web edges, as a webhook provider sends it: a request is retried
//! with the same events and the same `webhook-id` until it is acknowledged, on the other edge
//! when one does not answer, after `Retry-After` when told to wait.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dash_signature::SigningSecret;
use parking_lot::Mutex;

/// Longest a request may go unanswered before the harness gives up on it.
pub(crate) const REQUEST_BOUND: Duration = Duration::from_secs(30);
/// Longest an edge no fault touched may take to answer: its forward bound (3 attempts of at most
/// 5 s each, docs/OPERATIONS.md) and a second of slack for a loaded machine.
pub(crate) const ANSWER_BOUND: Duration = Duration::from_secs(16);
/// Every this many requests carries an NDJSON batch instead of one event.
const BATCH_EVERY: u64 = 5;
const BATCH_EVENTS: usize = 10;
/// Violations kept word for word in the report (all are counted).
const VIOLATIONS_KEPT: usize = 20;

/// An event id as the senders make it, `v{sender}-{request:08}-{line:02}`, held as one number so
/// that a long run's millions of ids stay small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct EventKey(u64);

impl EventKey {
    fn new(sender: usize, request: u64, line: usize) -> Self {
        Self(((sender as u64) << 40) | (request << 8) | line as u64)
    }

    /// The key of an id the senders made; `None` for any other text.
    pub fn parse(id: &str) -> Option<Self> {
        let mut parts = id.strip_prefix('v')?.split('-');
        let mut number = || parts.next()?.parse::<u64>().ok();
        let (sender, request, line) = (number()?, number()?, number()?);
        if sender >= 1 << 24 || request >= 1 << 32 || line >= 1 << 8 {
            return None;
        }
        let key = Self((sender << 40) | (request << 8) | line);
        (key.to_string() == id).then_some(key)
    }
}

impl fmt::Display for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}-{:08}-{:02}", self.0 >> 40, (self.0 >> 8) & 0xFFFF_FFFF, self.0 & 0xFF)
    }
}

/// What the senders saw, shared between them.
#[derive(Default)]
pub(crate) struct Ledger {
    pub acked: HashSet<EventKey>,
    /// Every id ever sent, acknowledged or not.
    pub sent: HashSet<EventKey>,
    pub requests: u64,
    /// Status → count, for every answer that was not 2xx.
    pub refused: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    /// Transport errors from an edge no fault touched while the request was out (a closed
    /// keep-alive connection races a request now and then; reported, not failed).
    pub transport_errors_unfaulted: u64,
    /// The first few of those, word for word.
    pub transport_error_examples: Vec<String>,
    pub violations: Vec<String>,
    pub violations_total: u64,
    /// The longest any edge no fault touched took to answer (2xx or a refusal).
    pub slowest_answer: Duration,
}

impl Ledger {
    fn violation(&mut self, text: String) {
        self.violations_total += 1;
        if self.violations.len() < VIOLATIONS_KEPT {
            self.violations.push(text);
        }
    }
}

pub(crate) struct Target {
    /// The web edges' base URLs.
    pub webs: Vec<String>,
    pub pipeline: String,
    pub secret: SigningSecret,
    /// Per edge, raised when a fault that stops it answering begins and when it is healed: a
    /// request to an edge that was faulted meanwhile may go unanswered without blame.
    pub disruptions: [AtomicU64; 2],
}

impl Target {
    pub fn disrupted(&self, web: usize) {
        self.disruptions[web].fetch_add(1, Ordering::SeqCst);
    }

    /// Whether no fault touched edge `web` since `epoch` was read, nor held it then (a fault
    /// raises the count when it begins and when it is healed: odd while it holds).
    fn untouched_since(&self, web: usize, epoch: u64) -> bool {
        epoch.is_multiple_of(2) && self.disruptions[web].load(Ordering::SeqCst) == epoch
    }
}

/// One sender, until `stop`: one request at a time, each retried until acknowledged.
pub(crate) async fn send(index: usize, target: Arc<Target>, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
    let client = match reqwest::Client::builder().timeout(REQUEST_BOUND).build() {
        Ok(client) => client,
        Err(err) => {
            ledger.lock().violation(format!("sender {index}: no HTTP client: {err}"));
            return;
        }
    };
    let mut web = index % target.webs.len();
    let mut made: u64 = 0;
    let mut pending: Option<(String, String, Vec<EventKey>)> = None;
    while !stop.load(Ordering::Relaxed) {
        let (msg_id, body, ids) = pending.take().unwrap_or_else(|| {
            made += 1;
            let count = if made.is_multiple_of(BATCH_EVERY) { BATCH_EVENTS } else { 1 };
            let ids: Vec<EventKey> = (0..count).map(|i| EventKey::new(index, made, i)).collect();
            let now = dash_domain::now_ms();
            let body: String = ids
                .iter()
                .map(|id| {
                    format!(r#"{{"id":"{id}","type":"verify.sent","timestamp":{now},"data":{{"sender":{index}}}}}"#)
                })
                .collect::<Vec<_>>()
                .join("\n");
            ledger.lock().sent.extend(ids.iter().cloned());
            (format!("msg-v{index}-{made}"), body, ids)
        });
        let content_type = if ids.len() == 1 { "application/json" } else { "application/x-ndjson" };
        let now_secs = dash_domain::now_ms() / 1000;
        let url = format!("{}/webhooks/{}", target.webs[web], target.pipeline);
        let request = client
            .post(&url)
            .header("content-type", content_type)
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", now_secs.to_string())
            .header("webhook-signature", target.secret.sign(&msg_id, now_secs, body.as_bytes()))
            .body(body.clone());
        ledger.lock().requests += 1;
        let epoch = target.disruptions[web].load(Ordering::SeqCst);
        let sent_at = std::time::Instant::now();
        let answered = |ledger: &mut Ledger| {
            let took = sent_at.elapsed();
            if !target.untouched_since(web, epoch) {
                return;
            }
            ledger.slowest_answer = ledger.slowest_answer.max(took);
            if took > ANSWER_BOUND {
                ledger
                    .violation(format!("answered after {:.1} s (bound {ANSWER_BOUND:?}) by {url}", took.as_secs_f64()));
            }
        };
        let wait = match request.send().await {
            Ok(response) if response.status().is_success() => {
                let _ = response.bytes().await;
                let mut ledger = ledger.lock();
                answered(&mut ledger);
                ledger.acked.extend(ids);
                None
            }
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                let text = response.text().await.unwrap_or_default();
                let mut ledger = ledger.lock();
                answered(&mut ledger);
                *ledger.refused.entry(status).or_default() += 1;
                let allowed = matches!(status, 429 | 503) && retry_after.is_some();
                if !allowed {
                    ledger.violation(format!("{status} from {url}: {}", text.chars().take(300).collect::<String>()));
                }
                pending = Some((msg_id, body, ids));
                // Honour Retry-After, shortened: the harness wants to see recovery, not wait it out.
                Some(Duration::from_millis(retry_after.map_or(200, |s| (s * 1000).min(500))))
            }
            Err(err) => {
                let mut ledger = ledger.lock();
                ledger.transport_errors += 1;
                if target.untouched_since(web, epoch) {
                    match err.is_timeout() {
                        true => ledger.violation(format!("no answer within {REQUEST_BOUND:?} from {url}")),
                        false => {
                            ledger.transport_errors_unfaulted += 1;
                            if ledger.transport_error_examples.len() < VIOLATIONS_KEPT / 4 {
                                let mut text = format!("{url}: {err}");
                                let mut source = std::error::Error::source(&err);
                                while let Some(cause) = source {
                                    text.push_str(&format!(": {cause}"));
                                    source = cause.source();
                                }
                                ledger.transport_error_examples.push(text);
                            }
                        }
                    }
                }
                pending = Some((msg_id, body, ids));
                web = (web + 1) % target.webs.len();
                Some(Duration::from_millis(50))
            }
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EventKey;

    #[test]
    fn an_event_key_reads_back_only_the_ids_senders_make() {
        let key = EventKey::new(3, 1_234, 7);
        assert_eq!(key.to_string(), "v3-00001234-07");
        assert_eq!(EventKey::parse("v3-00001234-07"), Some(key));
        for foreign in ["v3-1234-07", "v3-00001234-07-1", "x3-00001234-07", "v3-00001234", "v-1-00000001-00", ""] {
            assert_eq!(EventKey::parse(foreign), None, "{foreign}");
        }
    }
}
