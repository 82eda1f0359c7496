//! `dashd bench`: a closed-loop (or paced) load generator that POSTs signed events and reports
//! events/s and acknowledgement latency; and the ceilings Dash is measured against.
//!
//! The plain-HTTP ceiling is an axum handler on purpose: it is the framework Dash runs on,
//! doing only the parse, so the ratio shows what Dash's own work costs.

mod ceiling;
mod e2e;
mod live;
mod naive_live;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use dash_signature::SigningSecret;
use hdrhistogram::Histogram;
use tokio::sync::Mutex;

pub use ceiling::{postgres_ceiling, serve_plain, sqlite_ceiling};
pub use e2e::{E2eOptions, run_e2e};
pub use live::{LiveOptions, run_live};
pub use naive_live::serve_naive_live;

#[derive(Debug, Clone, clap::Args)]
pub struct LoadOptions {
    /// Dash's base URL (e.g. http://127.0.0.1:8080), or a full /webhooks/… URL.
    #[arg(long)]
    pub url: String,
    /// Pipeline id to send to.
    #[arg(long, default_value = "bench")]
    pub pipeline: String,
    /// The pipeline's signing secret (whsec_…); each request is signed.
    #[arg(long, conflicts_with = "token")]
    pub secret: Option<String>,
    /// The pipeline's bearer token, instead of signing.
    #[arg(long)]
    pub token: Option<String>,
    /// Connections, each sending one request at a time.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Events per request: 1 sends a JSON object, more send NDJSON.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Target events per second over all connections (paced); unset: as fast as acknowledged.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Event times over this much of the recent past, replayed in order over the run (for reads
    /// over a day of history), instead of all being now.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub spread: Option<Duration>,
    /// Every event from a customer of its own (for views grouped by a value of high cardinality).
    #[arg(long)]
    pub distinct_customers: bool,
    /// Events from this many customers, in turn (for views whose groups are all active).
    #[arg(long, conflicts_with = "distinct_customers")]
    pub customers: Option<u64>,
}

/// What a load run measured.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub elapsed: Duration,
    pub requests: u64,
    pub events_accepted: u64,
    /// Status → count, for everything but 202.
    pub rejected: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    /// Acknowledgement latency of 202 answers, microseconds.
    pub latency_us: Option<Histogram<u64>>,
    pub json: bool,
}

impl LoadReport {
    pub fn events_per_sec(&self) -> f64 {
        self.events_accepted as f64 / self.elapsed.as_secs_f64()
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        self.latency_us.as_ref().map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
    }

    fn max_ms(&self) -> f64 {
        self.latency_us.as_ref().map_or(0.0, |h| h.max() as f64 / 1000.0)
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.json {
            let body = serde_json::json!({
                "elapsed_secs": self.elapsed.as_secs_f64(),
                "requests": self.requests,
                "events_accepted": self.events_accepted,
                "events_per_sec": self.events_per_sec(),
                "ack_p50_ms": self.quantile_ms(0.5),
                "ack_p99_ms": self.quantile_ms(0.99),
                "ack_max_ms": self.max_ms(),
                "rejected": self.rejected,
                "transport_errors": self.transport_errors,
            });
            return write!(f, "{body}");
        }
        writeln!(f, "duration        {:.1}s", self.elapsed.as_secs_f64())?;
        writeln!(f, "requests        {}", self.requests)?;
        writeln!(f, "events accepted {}", self.events_accepted)?;
        writeln!(f, "events/s        {:.0}", self.events_per_sec())?;
        writeln!(
            f,
            "ack latency     p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            self.quantile_ms(0.5),
            self.quantile_ms(0.99),
            self.max_ms()
        )?;
        write!(f, "rejected        {:?}  transport errors {}", self.rejected, self.transport_errors)
    }
}

fn webhook_url(options: &LoadOptions) -> String {
    if options.url.contains("/webhooks/") {
        options.url.clone()
    } else {
        format!("{}/webhooks/{}", options.url.trim_end_matches('/'), options.pipeline)
    }
}

/// One event of the kind the bench sends: ~200 bytes, with a unique, time-ordered id.
pub fn sample_event(id: &str, now_ms: i64) -> String {
    sample_event_of(id, now_ms, "cus_8f2b1c")
}

/// [`sample_event`] at `time_ms`, from `customer`.
fn sample_event_of(id: &str, time_ms: i64, customer: &str) -> String {
    format!(
        r#"{{"id":"{id}","type":"order.created","timestamp":{time_ms},"data":{{"amount":4200,"currency":"EUR","customer":"{customer}","items":3,"channel":"web"}}}}"#
    )
}

/// Adds the Standard Webhooks headers for `body`, signed at `ts_secs`.
fn signed(
    request: reqwest::RequestBuilder,
    secret: &SigningSecret,
    msg_id: &str,
    ts_secs: i64,
    body: &[u8],
) -> reqwest::RequestBuilder {
    request
        .header("webhook-id", msg_id)
        .header("webhook-timestamp", ts_secs.to_string())
        .header("webhook-signature", secret.sign(msg_id, ts_secs, body))
}

pub async fn run_load(options: LoadOptions) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(options.concurrency > 0 && options.batch > 0, "concurrency and batch must be at least 1");
    let secret = options.secret.as_deref().map(SigningSecret::parse).transpose().context("--secret")?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = webhook_url(&options);
    let run_id = format!("{:x}", dash_domain::now_ms());
    let report = Arc::new(Mutex::new(LoadReport {
        latency_us: Some(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        json: options.json,
        ..Default::default()
    }));
    // Paced mode: each connection sends one request per `interval`.
    let interval =
        options.rate.map(|rate| Duration::from_secs_f64(options.concurrency as f64 * options.batch as f64 / rate));
    let started = Instant::now();
    let deadline = started + options.duration;

    let mut workers = Vec::with_capacity(options.concurrency);
    for worker in 0..options.concurrency {
        let (client, url, secret, token, report, run_id) =
            (client.clone(), url.clone(), secret.clone(), options.token.clone(), report.clone(), run_id.clone());
        let batch = options.batch;
        let spread_ms = options.spread.map(|spread| (spread.as_millis() as i64).max(1));
        let run_secs = options.duration.as_secs_f64().max(0.001);
        let distinct_customers = options.distinct_customers;
        let customers = options.customers.filter(|n| *n > 0);
        workers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let (mut requests, mut accepted, mut transport_errors) = (0u64, 0u64, 0u64);
            let mut rejected: BTreeMap<u16, u64> = BTreeMap::new();
            let mut next_send = Instant::now() + interval.map_or(Duration::ZERO, |i| i.mul_f64(worker as f64 / 64.0));
            let mut n: u64 = 0;
            let mut retry: Option<(String, Bytes)> = None;
            while Instant::now() < deadline {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(next_send.into()).await;
                    next_send += interval;
                }
                // A refused request is sent again as it was (same events, same id), as a
                // sender retries; only its signature is made anew.
                let (msg_id, body) = match retry.take() {
                    Some(refused) => refused,
                    None => {
                        let now = dash_domain::now_ms();
                        let mut body = String::with_capacity(batch * 220);
                        for i in 0..batch {
                            let seq = n + i as u64;
                            let id = format!("{run_id}-{worker:03}-{seq:012}");
                            // Spread: the run replays the last `spread` in order, from its start
                            // at the run's start to now at the run's end (as a day of traffic
                            // sent again would be), so each batch's times are close together.
                            let time = match spread_ms {
                                Some(spread) => {
                                    let through = started.elapsed().as_secs_f64() / run_secs;
                                    now - spread + (spread as f64 * through.min(1.0)) as i64
                                }
                                None => now,
                            };
                            let customer = match customers {
                                _ if distinct_customers => std::borrow::Cow::Borrowed(id.as_str()),
                                Some(pool) => std::borrow::Cow::Owned(format!("cus_{:06}", seq % pool)),
                                None => std::borrow::Cow::Borrowed("cus_8f2b1c"),
                            };
                            body.push_str(&sample_event_of(&id, time, &customer));
                            body.push('\n');
                        }
                        n += batch as u64;
                        (format!("msg_{run_id}_{worker}_{n}"), Bytes::from(body))
                    }
                };
                let content_type = if batch == 1 { "application/json" } else { "application/x-ndjson" };
                let mut request = client.post(&url).header("content-type", content_type);
                if let Some(secret) = &secret {
                    request = signed(request, secret, &msg_id, dash_domain::now_ms() / 1000, &body);
                } else if let Some(token) = &token {
                    request = request.bearer_auth(token).header("idempotency-key", &msg_id);
                }
                let sent = Instant::now();
                requests += 1;
                match request.body(body.clone()).send().await {
                    Ok(response) if response.status().as_u16() == 202 => {
                        let _ = response.bytes().await;
                        let _ = local.record(sent.elapsed().as_micros() as u64);
                        accepted += batch as u64;
                    }
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let _ = response.bytes().await;
                        *rejected.entry(status).or_default() += 1;
                        if status == 429 || status == 503 {
                            // Back off briefly rather than spin; the real client honours Retry-After.
                            retry = Some((msg_id, body));
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    Err(_) => {
                        transport_errors += 1;
                        retry = Some((msg_id, body));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            let mut report = report.lock().await;
            report.requests += requests;
            report.events_accepted += accepted;
            report.transport_errors += transport_errors;
            for (status, count) in rejected {
                *report.rejected.entry(status).or_default() += count;
            }
            if let Some(h) = report.latency_us.as_mut() {
                let _ = h.add(&local);
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed();
    let mut report =
        Arc::try_unwrap(report).map_err(|_| anyhow::anyhow!("workers still hold the report"))?.into_inner();
    report.elapsed = elapsed;
    Ok(report)
}
