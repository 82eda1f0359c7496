//! `dashd bench-e2e`: end-to-end latency across a split deployment. Signed single-event POSTs go
//! to one node (a web edge, which forwards them to an ingestor); a `/live` subscriber on another
//! node waits for the update that counts each event. Latency is from the 202 arriving at the
//! sender to that update arriving at the subscriber.
//!
//! Events are sent one at a time, so event `i` is counted once the pipeline's count reaches
//! `snapshot + i + 1` (this needs one ingestor behind the edge: with several, commits of
//! consecutive events may land out of order).

use std::time::{Duration, Instant};

use anyhow::Context;
use dash_signature::SigningSecret;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, clap::Args)]
pub struct E2eOptions {
    /// The node to POST to, e.g. http://127.0.0.3:8080.
    #[arg(long)]
    pub post_url: String,
    /// The node whose `/live` to subscribe to, e.g. http://127.0.0.4:8080.
    #[arg(long)]
    pub live_url: String,
    #[arg(long, default_value = "bench")]
    pub pipeline: String,
    /// The pipeline's signing secret.
    #[arg(long)]
    pub secret: String,
    /// Events to send.
    #[arg(long, default_value_t = 200)]
    pub events: usize,
    /// Events per second (one request in flight at a time).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
}

/// Counts seen on the socket, with when.
type Seen = Vec<(Instant, i64)>;

pub async fn run_e2e(options: E2eOptions) -> anyhow::Result<String> {
    let secret = SigningSecret::parse(&options.secret).context("--secret")?;
    let live = format!("{}/live", options.live_url.trim_end_matches('/').replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(&live).await.with_context(|| format!("connecting {live}"))?;
    let subscribe = serde_json::json!({"type": "subscribe", "pipeline": options.pipeline}).to_string();
    ws.send(Message::Text(subscribe.into())).await?;
    let base = loop {
        let frame = next_frame(&mut ws).await?;
        if frame["type"] == "snapshot" {
            break frame["stats"]["count"].as_i64().context("snapshot count")?;
        }
    };
    let target = base + options.events as i64;
    let reader = tokio::spawn(async move {
        let mut seen: Seen = Vec::new();
        while seen.last().is_none_or(|(_, count)| *count < target) {
            let frame = next_frame(&mut ws).await?;
            if let Some(count) = frame["stats"]["count"].as_i64() {
                seen.push((Instant::now(), count));
            }
        }
        anyhow::Ok(seen)
    });

    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let url = format!("{}/webhooks/{}", options.post_url.trim_end_matches('/'), options.pipeline);
    let run = std::process::id();
    let mut acked = Vec::with_capacity(options.events);
    let mut ack = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let pace = Duration::from_secs_f64(1.0 / options.rate.max(0.001));
    let start = Instant::now();
    for i in 0..options.events {
        tokio::time::sleep_until((start + pace * i as u32).into()).await;
        let id = format!("e2e-{run}-{i}");
        let body = format!(r#"{{"i":{i}}}"#);
        let ts = chrono::Utc::now().timestamp();
        let sent = Instant::now();
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", secret.sign(&id, ts, body.as_bytes()))
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(response.status() == 202, "event {i}: {} {}", response.status(), response.text().await?);
        let at = Instant::now();
        ack.record((at - sent).as_micros().max(1) as u64)?;
        acked.push(at);
    }
    let seen = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .context("the subscriber never saw every event counted")???;

    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut early = 0;
    for (i, acked_at) in acked.iter().enumerate() {
        let wanted = base + i as i64 + 1;
        let (seen_at, _) = seen.iter().find(|(_, count)| *count >= wanted).context("an event never counted")?;
        // The update may overtake the 202 on its way back through the edge.
        match seen_at.checked_duration_since(*acked_at) {
            Some(d) => latency.record(d.as_micros().max(1) as u64)?,
            None => {
                early += 1;
                latency.record(1)?;
            }
        }
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(format!(
        "events: {} at {}/s\n202 → update on the other node: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({early} updates arrived before their 202)\nPOST → 202 (as the sender sees it): p50 {:.1} ms, p99 {:.1} ms",
        options.events,
        options.rate,
        ms(&latency, 0.5),
        ms(&latency, 0.9),
        ms(&latency, 0.99),
        latency.max() as f64 / 1000.0,
        ms(&ack, 0.5),
        ms(&ack, 0.99),
    ))
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_frame(ws: &mut Socket) -> anyhow::Result<serde_json::Value> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no frame for 30 s")?
            .context("socket closed")??;
        if let Message::Text(text) = message {
            return Ok(serde_json::from_str(&text)?);
        }
    }
}
